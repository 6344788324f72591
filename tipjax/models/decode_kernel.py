"""One Pallas kernel per layer and decode step: write the step's key and value into the cache and attend.

The xla decode path spends five kernels per layer and step on this (two in-place cache writes, the score matmul,
the softmax, the value matmul), and on an H200 a decode step's kernels are not what costs: at batch 64 they run
at 91% of the HBM bound and the other ~1 ms per step lies between 353 kernel launches (docs/performance.md,
run E). This kernel does the five in one launch per layer and reads only each row's filled slots.

Grid (batch, kv head): a program holds its G queries [G, H] in registers and streams its kv head's cache slots
[start, index) in blocks of BLOCK, with an online softmax in fp32 on CUDA cores (G is 1-8 queries: too few rows
for tensor-core dots, and the step is bound by memory anyway). The new key and value enter from registers, so
the program never reads the slot it writes. Keys and values may be stored in any cache dtype (float8 too) and
are computed on in fp32; the output is in the queries' dtype.

Lowered by Pallas to Triton on GPUs; anywhere else it runs in Pallas interpret mode (the tests' reference path).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from tipjax.models.cache import to_cache

BLOCK = 32  # cache slots per loop iteration: a [G, BLOCK, H] fp32 product stays in registers for G <= 4


def fits(groups: int, head_dim: int, slots: int) -> bool:
    """Whether the kernel takes these shapes: Triton tensors have power-of-two sizes."""
    pow2 = lambda n: n >= 1 and n & (n - 1) == 0
    return pow2(groups) and pow2(head_dim) and head_dim >= 16 and slots % BLOCK == 0


def write_and_attend(q: jax.Array, k_new: jax.Array, v_new: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     starts: jax.Array, index: jax.Array, *, interpret: bool | None = None):
    """Writes k_new, v_new at slot `index` of every row and attends over slots [starts[b], index].

    Args:
      q: [B, K, G, H] this step's queries (G per kv head), unscaled.
      k_new, v_new: [B, K, H] this step's key and value, in any float dtype (stored as the cache's).
      k_cache, v_cache: [B, K, S, H] a layer's cache buffers, S a multiple of BLOCK; donate them for an in-place
        update.
      starts: [B] int32, each row's first visible slot (LayerCache.starts); index: [] int32, this step's slot.
    Returns:
      (out [B, K, G, H] in q's dtype, k_cache, v_cache with slot `index` written).
    """
    b, kv, g, h = q.shape
    s = k_cache.shape[2]
    if not fits(g, h, s):
        raise ValueError(f"write_and_attend needs power-of-two groups and head_dim >= 16 and slots a multiple of "
                         f"{BLOCK}; got G={g}, H={h}, S={s}")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    kernel = functools.partial(_kernel, scale=h**-0.5)
    per_row = lambda i, j: (i,)
    head = lambda i, j: (i, j, 0)
    slab = lambda i, j: (i, j, 0, 0)
    return pl.pallas_call(
        kernel,
        grid=(b, kv),
        in_specs=[
            pl.BlockSpec((None,), per_row),                      # starts
            pl.BlockSpec((None,), lambda i, j: (0,)),            # index
            pl.BlockSpec((None, None, g, h), slab),              # q
            pl.BlockSpec((None, None, h), head),                 # k_new
            pl.BlockSpec((None, None, h), head),                 # v_new
            pl.BlockSpec((None, None, s, h), slab),              # k_cache
            pl.BlockSpec((None, None, s, h), slab),              # v_cache
        ],
        out_specs=[
            pl.BlockSpec((None, None, g, h), slab),
            pl.BlockSpec((None, None, s, h), slab),
            pl.BlockSpec((None, None, s, h), slab),
        ],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(k_cache.shape, k_cache.dtype),
                   jax.ShapeDtypeStruct(v_cache.shape, v_cache.dtype)],
        input_output_aliases={5: 1, 6: 2},
        # Triton, not the default Mosaic GPU backend: a whole [S, H] slab per program is Triton's pointer block,
        # Mosaic GPU would stage it in shared memory.
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="tipjax_write_and_attend",
    )(starts.astype(jnp.int32), jnp.reshape(index, (1,)).astype(jnp.int32), q, k_new, v_new, k_cache, v_cache)


def _kernel(starts_ref, index_ref, q_ref, kn_ref, vn_ref, k_ref, v_ref, o_ref, ko_ref, vo_ref, *, scale):
    start, index = starts_ref[()], index_ref[()]
    q = q_ref[...].astype(jnp.float32) * scale                        # [G, H]
    k_new = to_cache(kn_ref[...], ko_ref.dtype)                       # [H], as the cache will hold it
    v_new = to_cache(vn_ref[...], vo_ref.dtype)
    ko_ref[pl.ds(index, 1), :] = k_new[None, :]
    vo_ref[pl.ds(index, 1), :] = v_new[None, :]

    # The new slot first (always visible), so the running max is finite and the normaliser >= 1.
    m = jnp.sum(q * k_new.astype(jnp.float32)[None, :], axis=-1)     # [G]
    norm = jnp.ones_like(m)
    acc = jnp.broadcast_to(v_new.astype(jnp.float32)[None, :], q.shape)

    def block(j, carry):
        m, norm, acc = carry
        at = pl.multiple_of(j * BLOCK, BLOCK)
        keys = k_ref[pl.ds(at, BLOCK), :].astype(jnp.float32)        # [BLOCK, H]
        values = v_ref[pl.ds(at, BLOCK), :].astype(jnp.float32)
        slots = at + jnp.arange(BLOCK)
        seen = (slots >= start) & (slots < index)                     # the new slot is counted above
        scores = jnp.sum(q[:, None, :] * keys[None, :, :], axis=-1)   # [G, BLOCK]
        scores = jnp.where(seen[None, :], scores, -jnp.inf)
        m_next = jnp.maximum(m, jnp.max(scores, axis=-1))
        p = jnp.exp(scores - m_next[:, None])
        fade = jnp.exp(m - m_next)
        acc = acc * fade[:, None] + jnp.sum(p[:, :, None] * values[None, :, :], axis=1)
        return m_next, norm * fade + jnp.sum(p, axis=-1), acc

    m, norm, acc = jax.lax.fori_loop(start // BLOCK, (index + BLOCK - 1) // BLOCK, block, (m, norm, acc))
    o_ref[...] = (acc / norm[:, None]).astype(o_ref.dtype)
