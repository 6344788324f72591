"""KVCache: the explicit key/value cache pytree that Decoder.hidden_cached takes and returns; LayerCache: the
view of it that one block's attention gets inside the layer scan."""

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


@struct.dataclass
class LayerCache:
    """What attention.cached_attention needs to write one layer's new keys/values and read the cache.

    k, v:   [L, B, S, K, H], all layers: the scan carries the whole cache and updates it in place.
    mask:   [B, S] bool, already holding this call's token mask at slots [index, index + T).
    layer:  [] int32, this block's layer.
    index:  [] int32, the slot of this call's first token (may be traced).
    fresh:  static; promises index 0 (an empty cache): attention then reads the T new keys only.
    window: static; promises every query's slot is < window: attention reads slots [0, window) only.
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    layer: jax.Array
    index: jax.Array
    fresh: bool = struct.field(pytree_node=False, default=False)
    window: int | None = struct.field(pytree_node=False, default=None)
