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


# Dtypes a cache may be stored in. float8 halves the bytes a decode step reads at long windows (a rollout knob:
# the sampler then attends over rounded keys and values; the trainer's forward does not).
CACHE_DTYPES = ("bfloat16", "float16", "float32", "float8_e4m3fn", "float8_e5m2")


def check_cache_dtype(dtype) -> jnp.dtype | None:
    """None (the compute dtype) or one of CACHE_DTYPES, as a dtype; anything else is a ValueError."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in CACHE_DTYPES:
        raise ValueError(f"cache dtype {dtype!r} is not supported; valid: {', '.join(CACHE_DTYPES)}")
    return dt


def to_cache(x: jax.Array, dtype) -> jax.Array:
    """x in the cache's dtype. float8 values beyond the format's range are clipped to it: a plain cast turns
    them into NaN (e4m3fn has no infinity), and one NaN key poisons every later query of its row."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize == 1:
        big = float(jnp.finfo(dtype).max)
        x = jnp.clip(x, -big, big)
    return x.astype(dtype)


@struct.dataclass
class PromptCache:
    """The keys and values of P prompts that a cache's B = P * n rows share: row b reads prompt b // n (n samples
    per prompt, as sampling.generate's num_samples lays rows out). The rows' own buffers then hold only their
    responses, so a prompt's keys are computed, stored and read once for its n samples, not n times.

    k, v:    tuples of L arrays [P, K, Sp, H] (in a LayerCache: one layer's array)
    mask:    [P, Sp] bool, True on real prompt tokens (left padded within [0, length))
    starts:  [P] int32, each prompt's first real slot
    length:  static; slots [length, Sp) are empty (Sp is rounded up to a decode kernel's block)
    """

    k: tuple[jax.Array, ...] | jax.Array
    v: tuple[jax.Array, ...] | jax.Array
    mask: jax.Array
    starts: jax.Array
    length: int = struct.field(pytree_node=False, default=0)

    def layer(self, i: int) -> PromptCache:
        return self.replace(k=self.k[i], v=self.v[i])


@struct.dataclass
class KVCache:
    """Keys and values of every layer for S slots.

    k, v:   tuples of L arrays [B, K, S, H] in the compute dtype or a CACHE_DTYPES one
    mask:   [B, S] bool, True where a slot holds a real token (written and not padding)
    index:  int32 scalar, the next slot to write (same for all rows; rows differ only by mask)
    prompt: a PromptCache the rows attend over before their own slots, or None. Its slots come first in every
            row's sequence (queries see all of its real tokens), and the rows' slot 0 follows its last one.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array
    prompt: PromptCache | None = None

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

    def grow(self, max_len: int) -> KVCache:
        """The same cache with `max_len` slots: empty (zero, masked-out) slots appended to every buffer.

        The sampler grows its cache from one decode segment to the next, so each segment's attention reads
        whole buffers: a slice of a longer buffer would be materialised per layer and step by XLA:GPU.
        """
        extra = max_len - self.max_len
        if extra < 0:
            raise ValueError(f"cannot shrink a KVCache from {self.max_len} to {max_len} slots")
        if extra == 0:
            return self
        pad = lambda x: jnp.pad(x, [(0, 0)] * 2 + [(0, extra), (0, 0)])
        return KVCache(k=tuple(map(pad, self.k)), v=tuple(map(pad, self.v)),
                       mask=jnp.pad(self.mask, [(0, 0), (0, extra)]), index=self.index, prompt=self.prompt)


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
    prompt: the shared prompt's keys and values for this layer (KVCache.prompt), read before the row's own slots.
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array
    starts: jax.Array | None = None
    fresh: bool = struct.field(pytree_node=False, default=False)
    prompt: PromptCache | None = None
