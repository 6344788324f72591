"""KVCache: the explicit key/value cache pytree that Decoder.hidden_cached takes and returns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    """Keys and values of every layer for S slots.

    k, v:  [L, B, S, K, H] in the compute dtype
    mask:  [B, S] bool, True where a slot holds a real token (written and not padding)
    index: int32 scalar, the next slot to write (same for all rows; rows differ only by mask)
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
              dtype) -> KVCache:
        shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   mask=jnp.zeros((batch, max_len), jnp.bool_), index=jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]
