"""TPU attention for prefill and training: JAX's Pallas splash-attention kernel behind tipjax's AttentionMask.

Splash takes a static block-sparse mask (causal or full) plus per-token segment ids, one batch row and one kv
head (MQA form: the G query heads of that kv head) at a time. tipjax's masks map onto it without a dense
[T, S] mask: left padding and packed sequences become segment ids (padding 0, real tokens segment + 1), so a
real query never sees a pad key or another sequence. A pad query sees only pad keys (finite output that
nothing reads), where the XLA path gives it a uniform softmax; real rows agree to float rounding.

Mosaic kernels are not partitioned by XLA: on a device mesh (the abstract mesh set with `jax.set_mesh`), the
kernel runs under shard_map, batch and kv heads split as the logical rules place them (sharding.py); each
device attends over its own rows and heads with no communication. Off TPU the kernel runs in Pallas interpret
mode (tests on CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from tipjax.models import sharding

BLOCK = 128  # the smallest block splash tiles by on TPU; sequence lengths must be a multiple
_MAX_BLOCK = 512


def fits(*, t: int, s: int, head_dim: int, q_offset_given: bool) -> bool:
    """Whether splash can run this call: self-attention (no cache offset, t == s) over a multiple of BLOCK
    tokens with a head_dim the TPU lanes tile (a multiple of 128)."""
    return not q_offset_given and t == s and t % BLOCK == 0 and head_dim % 128 == 0


def _block(t: int) -> int:
    return max(b for b in (_MAX_BLOCK, 256, BLOCK) if t % b == 0)


@functools.lru_cache(maxsize=64)
def _kernel(t: int, groups: int, causal: bool, interpret: bool):
    """The splash MQA kernel for [G, t, H] queries over [t, H] keys: built once per static shape."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    base = sm.CausalMask((t, t)) if causal else sm.FullMask((t, t))
    b = _block(t)
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    # Cached across traces, so its mask arrays must be concrete: built inside a trace (a jit, a layer scan) they
    # would be that trace's tracers, and the next trace at this shape would fail on them (UnexpectedTracerError).
    with jax.ensure_compile_time_eval():
        return sk.make_splash_mqa_single_device(sm.MultiHeadMask([base] * groups), block_sizes=sizes,
                                                interpret=interpret)


def segment_ids(kv_valid: jax.Array | None, segments: jax.Array | None, b: int, t: int) -> jax.Array:
    """[B, t] int32: 0 for padding, segment + 1 for real tokens (1 without segments)."""
    ids = jnp.ones((b, t), jnp.int32) if segments is None else segments.astype(jnp.int32) + 1
    if kv_valid is not None:
        ids = jnp.where(kv_valid[:, :t].astype(jnp.bool_), ids, 0)
    return ids


def _local(q, k, v, q_ids, kv_ids, *, causal: bool, interpret: bool):
    """q [b, T, N, H], k, v [b, T, K, H], q_ids, kv_ids [b, T] (one device's share) -> [b, T, N, H]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    kernel = _kernel(t, n // kv_heads, causal, interpret)
    # Splash does not scale the scores; [b, K, G, T, H] queries against [b, K, T, H] keys.
    q = (q * jnp.asarray(h**-0.5, q.dtype)).reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4)
    k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)

    def one(q_kv, k_kv, v_kv, q_row, kv_row):  # [G, T, H], [T, H], [T, H], [T], [T]
        return kernel(q_kv, k_kv, v_kv, segment_ids=sk.SegmentIds(q=q_row, kv=kv_row))

    per_head = jax.vmap(one, in_axes=(0, 0, 0, None, None))
    out = jax.vmap(per_head)(q, k.astype(q.dtype), v.astype(q.dtype), q_ids, kv_ids)  # [b, K, G, T, H]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_valid: jax.Array | None, q_segments: jax.Array | None,
              kv_segments: jax.Array | None, *, causal: bool, interpret: bool) -> jax.Array:
    """q [B, T, N, H], k, v [B, T, K, H] -> [B, T, N, H]; see the module docstring for the mask mapping.

    Query j is token j (no cache offset), so kv_valid [B, T] also marks the real queries.
    """
    b, t = q.shape[:2]
    q_ids, kv_ids = segment_ids(kv_valid, q_segments, b, t), segment_ids(kv_valid, kv_segments, b, t)
    run = functools.partial(_local, causal=causal, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return run(q, k, v, q_ids, kv_ids)
    # Rows and kv heads split as the logical rules place activations (an axis that does not divide: replicated).
    act = sharding.logical_to_spec(("batch", None, "kv_heads", None), sharding.STORAGE_RULES, shape=k.shape,
                                   mesh=mesh)
    rows = P(*act[:2])
    return jax.shard_map(run, mesh=mesh, in_specs=(act, act, act, rows, rows), out_specs=act,
                         check_vma=False)(q, k, v, q_ids, kv_ids)
