"""KVCache: the explicit key/value cache pytree that Decoder.hidden_cached takes and returns; LayerCache: the
view of it that one block's attention gets.

Layout: one buffer per layer and per k/v, heads-major [B, K, S, H]. Heads-major makes the decode einsums (and
a decode kernel) read each head's keys as one contiguous [S, H] slab with no transpose; one buffer per layer
lets a decode step update and read a layer's keys in place, with no dynamic slice of an [L, ...] stack (which
XLA materialises as a copy of the whole layer window per step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    """Keys and values of every layer for S slots.

    k, v:  tuples of L arrays [B, K, S, H] in the compute dtype
    mask:  [B, S] bool, True where a slot holds a real token (written and not padding)
    index: int32 scalar, the next slot to write (same for all rows; rows differ only by mask)
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
              dtype) -> KVCache:
        shape = (batch, num_kv_heads, max_len, head_dim)
        return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   mask=jnp.zeros((batch, max_len), jnp.bool_), index=jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.mask.shape[1]


@struct.dataclass
class LayerCache:
    """What attention.cached_attention needs to write one layer's new keys/values and read the cache.

    k, v:   [B, K, S, H], this layer's buffers (updated in place when the cache is donated or loop-carried).
    mask:   [B, S] bool, already holding this call's token mask at slots [index, index + T).
    index:  [] int32, the slot of this call's first token (may be traced).
    starts: [B] int32 or None. When given, the caller promises that each row's visible slots are exactly
            [starts[b], index + T) (left padding, then no holes: the sampler's rows). A decode kernel then
            reads only that range; rows that break the promise (finished rows writing padding) get
            unspecified but finite outputs.
    fresh:  static; promises index 0 (an empty cache): attention then reads the T new keys only.
    window: static; promises every query's slot is < window: attention reads slots [0, window) only.
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array
    starts: jax.Array | None = None
    fresh: bool = struct.field(pytree_node=False, default=False)
    window: int | None = struct.field(pytree_node=False, default=None)
