"""One Pallas kernel per layer and decode step: q/k norm and rotation, the cache write, and attention.

The xla decode path spends eight kernels per layer and step between the q/k/v matmul and the output
projection (slice, q/k norm, rotation, two in-place cache writes, the score matmul, the softmax, the value
matmul), and on an H200 a decode step's kernels are not what costs: at batch 64 they run at 91% of the HBM
bound and the other ~1 ms per step lies between 353 kernel launches (docs/performance.md, run E). This kernel
does the eight in one launch per layer, straight from the q/k/v matmul's output, and reads only each row's
filled cache slots.

Grid (batch, kv head): a program loads its kv group's G queries, key and value [G + 2, H] from the stacked
q/k/v output, normalises (Qwen3's q_norm / k_norm) and rotates (half-split rope, as `layers.rope`) the
queries and the key with the xla path's bf16 rounding points, writes the key and value at slot `index`, and
streams the slots [start, index) of its kv head in blocks of Tiling.block with an online softmax in fp32 and
tensor-core dots, the G queries padded to 16 rows. (The first version multiplied and summed on CUDA cores,
as G is only 1-8 rows: on an H200 it ran 2-5x slower than the xla path, Triton's reductions over 3-D register
tiles being the cost.) Heads are handled as two halves [.., H/2] throughout, so the rotation needs no shuffle
of a register tensor. The new key and value enter from registers: a program never reads the slot it writes.
With a shared prompt (cache.PromptCache: a prompt's n samples read one copy of its keys) a program streams its
prompt's blocks first, then its own: the n programs of a prompt read the same addresses at about the same time,
so the prompt comes from HBM once and from L2 the other n - 1 times, in the same launch and with no combine.
The cache may be stored in any cache dtype; over float8 the dots take float16 operands (DEFAULT_FLOAT8): with
e4m3 -> bf16 conversions the kernel was slower than xla over float8 on an H200, with e4m3 -> f16 and blocks of
128 it takes 16% less time (docs/performance.md, run I).

Lowered by Pallas to Triton on GPUs; anywhere else it runs in Pallas interpret mode (the tests' reference path).
jax 0.11 deprecates Pallas's Triton backend in favour of Mosaic GPU (a warning at lowering) and announces its
removal; it is still there in jax 0.12, the newest pyproject.toml allows. Where a jax no longer ships it,
TRITON is None: "auto" then decodes with xla on GPUs, and 'pallas' is a one-line error there (interpret mode,
the tests' path, needs no Triton). A Mosaic GPU port, measured against this one (docs/performance.md, run G),
is the way forward.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:
    from jax.experimental.pallas import triton as TRITON
except ImportError:  # removed from jax (announced since 0.11): "auto" falls back to xla, see the module doc
    TRITON = None
from jax.sharding import PartitionSpec as P

from tipjax.models import sharding
from tipjax.models.cache import PromptCache, to_cache

BLOCK = 32  # the fewest cache slots per loop iteration
ROWS = 16   # a tensor-core dot's fewest rows: the G queries of a kv head are padded to it


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Triton launch settings: cache slots per loop iteration (a power of two >= BLOCK; the cache length must be a
    multiple of it: the sampler rounds caches to DEFAULT's), warps per program, software-pipelining stages,
    and splits of each row's slots over several programs (flash-decoding: more parallelism when batch x kv heads
    is small next to the GPU's SMs, for one more small combine kernel). scripts/bench_decode_kernel.py times
    several against the xla path (docs/performance.md, run G)."""
    block: int = BLOCK
    num_warps: int = 4
    num_stages: int = 2
    splits: int = 0  # programs per row and kv head, each over a share of the filled slots, combined after;
                     # 0: auto_splits
    float8_operands: str = ""  # the dots' operand dtype over a float8 cache ("": the compute dtype); "float16":
                               # e4m3 -> f16 is one PTX conversion per pair on Hopper, exact for cache values
    transposed: bool = False   # scores as [BLOCK, M] (keys and values the dots' left operands): a Hopper wgmma's
                               # 64-row side is then the cache block, not 16 padded queries, and converted
                               # keys may enter it from registers (not measured yet)


# The decoder's launch settings, for 16-bit and for float8 caches; scripts/bench_accelerator.py replaces them in
# its own worker process to time others. 16-bit (runs G, I): block 64 was 1-4% faster than 32 for the attention
# half alone and 0-1.5% in the sampler, within noise. float8 (run I, the attention half at batch 64, 1024 of 1280
# slots filled): bf16 operands at this tiling 101.5 us, xla 67.1, float16 operands 56.1 (bf16 cache: 76.3); the
# OPD step with it 4.00-4.10 s.
DEFAULT = Tiling()
DEFAULT_FLOAT8 = Tiling(block=128, num_warps=4, num_stages=3, float8_operands="float16")


def default_tiling(cache_bytes: int) -> Tiling:
    """The launch settings for a cache of `cache_bytes`-byte elements."""
    return DEFAULT_FLOAT8 if cache_bytes == 1 else DEFAULT

PROGRAMS = 256  # enough programs to keep an H100/H200's 132 SMs busy (two each, near enough)


def auto_splits(programs: int, blocks: int) -> int:
    """Splits per row and kv head: doubled (to 8 at most, and no more than the cache has blocks) until
    batch x kv heads x splits reaches PROGRAMS. Batch 64 x 8 kv heads: 1; batch 8: 4."""
    splits = 1
    while programs * splits < PROGRAMS and splits < 8 and 2 * splits <= blocks:
        splits *= 2
    return splits


def heads_fit(groups: int, head_dim: int) -> bool:
    """Whether the kernel takes these heads: Triton tensors have power-of-two sizes, and its dots contract over
    half a head (>= 16)."""
    pow2 = lambda n: n >= 1 and n & (n - 1) == 0
    return pow2(groups) and pow2(head_dim) and head_dim >= 32


def fits(groups: int, head_dim: int, slots: int, block: int) -> bool:
    """Whether the kernel takes these heads and a cache of `slots`: whole blocks of `block` slots."""
    return heads_fit(groups, head_dim) and slots % block == 0


def misfit(num_heads: int, num_kv_heads: int, head_dim: int) -> str | None:
    """Why the kernel cannot take a model's attention heads, as the tail of a one-line config error; None if it
    can (config_checks and eval ask before any weights load)."""
    groups = num_heads // num_kv_heads
    if heads_fit(groups, head_dim):
        return None
    return (f"needs power-of-two query heads per kv head and head_dim >= 32; this model has {groups} and "
            f"{head_dim} (use 'auto')")


def no_triton() -> str:
    """The tail of the one-line error for 'pallas' on GPUs with a jax that no longer ships Triton."""
    return f"needs Pallas's Triton backend, which jax {jax.__version__} no longer ships (use 'auto' or 'xla')"


def missing_here() -> str | None:
    """Why the kernel cannot run on this machine's GPUs (the tail of a one-line config error), or None. Off GPUs
    it runs in interpret mode, which needs no Triton."""
    return no_triton() if TRITON is None and jax.default_backend() == "gpu" else None


def attend(qkv: jax.Array, k_cache: jax.Array, v_cache: jax.Array, starts: jax.Array, index: jax.Array, *,
           rope: tuple[jax.Array, jax.Array] | None = None, qk_norm: jax.Array | None = None, eps: float = 1e-6,
           interpret: bool | None = None, tiling: Tiling | None = None, prompt: PromptCache | None = None):
    """Norm and rotate this step's queries and key, write key and value at slot `index`, attend over
    [starts[b], index].

    Args:
      qkv: [B, K, G + 2, H] per kv head its G queries, its key, its value (DecodeLayer.wqkv's layout), in the
        compute dtype, before norm and rotation.
      k_cache, v_cache: [B, K, S, H] a layer's cache buffers (any cache dtype), S a multiple of the block; donate
        them (or carry them in a loop) for an in-place update.
      starts: [B] int32, each row's first visible slot (LayerCache.starts); index: [] int32, this step's slot.
      rope: (cos, sin) [B, H/2] fp32 of each row's position, or None (q and k are used as given).
      qk_norm: [G + 1, H] (DecodeLayer.qk_norm) or None; eps its epsilon.
      interpret: Pallas interpret mode; default: off on GPUs (CUDA or ROCm), on elsewhere.
      tiling: Triton launch settings (default: default_tiling of the cache's element size); S must be a multiple
        of tiling.block.
      prompt: one layer's shared prompt (cache.PromptCache: k, v [P, K, Sp, H], Sp a multiple of the block), B a
        multiple of P: row b first attends over prompt b // n's slots [prompt.starts, prompt.length), then over
        its own. The n rows of a prompt read the same prompt slots at about the same time, so HBM serves them
        once and the GPU's L2 cache the other n - 1 times.
    On a device mesh, call it under `jax.set_mesh` (the trainer does): the kernel then runs under shard_map per
    device. Without a mesh context XLA would gather sharded operands for the Triton call.
    Returns:
      (out [B, K, G, H] in qkv's dtype, k_cache, v_cache with slot `index` written).
    """
    b, kv, e, h = qkv.shape
    g, s = e - 2, k_cache.shape[2]
    tiling = tiling or default_tiling(jnp.dtype(k_cache.dtype).itemsize)
    sp = 0 if prompt is None else prompt.k.shape[2]
    if not fits(g, h, s, tiling.block) or sp % tiling.block:
        raise ValueError(f"the Pallas decode kernel needs power-of-two groups and head_dim >= 32 and slots a "
                         f"multiple of {tiling.block}; got G={g}, H={h}, S={s}, prompt slots {sp}")
    if prompt is not None and (b % prompt.k.shape[0] or prompt.k.dtype != k_cache.dtype):
        raise ValueError(f"a shared prompt needs rows a multiple of its prompts and the rows' cache dtype; got "
                         f"{b} rows of {k_cache.dtype} and {prompt.k.shape[0]} prompts of {prompt.k.dtype}")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    half = h // 2
    ones = jnp.ones((b, half), jnp.float32)
    cos, sin = (ones, ones * 0) if rope is None else rope
    norm = jnp.ones((g + 1, h), qkv.dtype) if qk_norm is None else qk_norm.astype(qkv.dtype)
    args = (starts.astype(jnp.int32), jnp.reshape(index, (1,)).astype(jnp.int32), qkv, cos.astype(jnp.float32),
            sin.astype(jnp.float32), norm, k_cache, v_cache)
    if prompt is not None:
        args += (prompt.starts.astype(jnp.int32), prompt.k, prompt.v)
    run = functools.partial(_call, scale=h**-0.5, eps=eps, normed=qk_norm is not None, rotated=rope is not None,
                            interpret=interpret, tiling=tiling, prompt_length=None if prompt is None else prompt.length)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return run(*args)
    # XLA does not partition a Triton call: on a mesh each device runs the kernel on its own rows and kv heads
    # (split as the sampling rules place the cache; an axis that does not divide stays replicated).
    spec = lambda shape: sharding.logical_to_spec(("batch", "kv_heads", None, None), sharding.SAMPLING_RULES,
                                                  shape=shape, mesh=mesh)
    slab_spec = spec(k_cache.shape)
    prompt_spec = None if prompt is None else spec(prompt.k.shape)
    if prompt is not None and prompt_spec[0] != slab_spec[0]:
        # prompts that do not split as their rows do: every device gets all rows (one gather, still correct)
        slab_spec, prompt_spec = P(None, *slab_spec[1:]), P(None, *prompt_spec[1:])
    rows = P(slab_spec[0])
    in_specs = (rows, P(), slab_spec, P(slab_spec[0], None), P(slab_spec[0], None), P(), slab_spec, slab_spec)
    if prompt is not None:
        in_specs += (P(prompt_spec[0]), prompt_spec, prompt_spec)
    return jax.shard_map(run, mesh=mesh, in_specs=in_specs, out_specs=(slab_spec, slab_spec, slab_spec),
                         check_vma=False)(*args)


def _call(starts, index, qkv, cos, sin, norm, k_cache, v_cache, *shared, scale, eps, normed, rotated, interpret,
          tiling, prompt_length):
    b, kv, e, h = qkv.shape
    g, s, half = e - 2, k_cache.shape[2], h // 2
    sp = shared[1].shape[2] if shared else 0
    samples = b // shared[1].shape[0] if shared else 1  # shapes here are per device on a mesh
    splits = tiling.splits or auto_splits(b * kv, (s + sp) // tiling.block)
    operands = qkv.dtype  # float16 operands over float8 only: bf16 -> f16 would round 16-bit cache values
    if tiling.float8_operands and jnp.dtype(k_cache.dtype).itemsize == 1 and qkv.dtype != jnp.float32:
        operands = jnp.dtype(tiling.float8_operands)
    kernel = functools.partial(_kernel, groups=g, half=half, scale=scale, eps=eps, normed=normed, rotated=rotated,
                               block=tiling.block, splits=splits, operands=operands,
                               transposed=tiling.transposed, prompt_length=prompt_length)
    slab = lambda i, j, k: (i, j, 0, 0)
    if splits == 1:  # the kernel normalises its own output
        parts = [pl.BlockSpec((None, None, g, h), slab)], [jax.ShapeDtypeStruct((b, kv, g, h), qkv.dtype)]
    else:  # unnormalised partial sums and their softmax maxima and normalisers, per split
        per_split = pl.BlockSpec((None, None, None, g), lambda i, j, k: (i, j, k, 0))
        parts = ([pl.BlockSpec((None, None, None, g, h), lambda i, j, k: (i, j, k, 0, 0)), per_split, per_split],
                 [jax.ShapeDtypeStruct((b, kv, splits, g, h), jnp.float32)]
                 + [jax.ShapeDtypeStruct((b, kv, splits, g), jnp.float32)] * 2)
    n_out = len(parts[0])
    results = pl.pallas_call(
        kernel,
        grid=(b, kv, splits),
        in_specs=[
            pl.BlockSpec((None,), lambda i, j, k: (i,)),            # starts
            pl.BlockSpec((None,), lambda i, j, k: (0,)),            # index
            pl.BlockSpec((None, None, e, h), slab),                 # qkv
            pl.BlockSpec((None, half), lambda i, j, k: (i, 0)),     # cos
            pl.BlockSpec((None, half), lambda i, j, k: (i, 0)),     # sin
            pl.BlockSpec((g + 1, h), lambda i, j, k: (0, 0)),       # qk_norm
            pl.BlockSpec((None, None, s, h), slab),                 # k_cache
            pl.BlockSpec((None, None, s, h), slab),                 # v_cache
        ] + ([
            pl.BlockSpec((None,), lambda i, j, k: (i // samples,)),                  # the row's prompt's start
            pl.BlockSpec((None, None, sp, h), lambda i, j, k: (i // samples, j, 0, 0)),  # its keys
            pl.BlockSpec((None, None, sp, h), lambda i, j, k: (i // samples, j, 0, 0)),  # its values
        ] if shared else []),
        out_specs=parts[0] + [pl.BlockSpec((None, None, s, h), slab), pl.BlockSpec((None, None, s, h), slab)],
        out_shape=parts[1] + [jax.ShapeDtypeStruct(k_cache.shape, k_cache.dtype),
                              jax.ShapeDtypeStruct(v_cache.shape, v_cache.dtype)],
        input_output_aliases={6: n_out, 7: n_out + 1},
        # Triton, not the default Mosaic GPU backend: a whole [S, H] slab per program is Triton's pointer block,
        # Mosaic GPU would stage it in shared memory.
        compiler_params=_compiler_params(tiling, interpret),
        interpret=interpret,
        name="tipjax_decode_attention",
    )(starts, index, qkv, cos, sin, norm, k_cache, v_cache, *shared)
    if splits == 1:
        return tuple(results)
    acc, m, l, k_layer, v_layer = results
    # Unrolled over the few splits: elementwise ops on static slices, not reductions over the split axis, so XLA
    # combines in one loop fusion (a max reduction and a weighted sum would be two kernels per layer and step).
    top = functools.reduce(jnp.maximum, [m[:, :, i] for i in range(splits)])  # finite: split 0 holds the new slot
    w = [jnp.exp(m[:, :, i] - top) for i in range(splits)]  # [B, K, G] each, 0 for splits that saw nothing
    num = functools.reduce(jnp.add, [w[i][..., None] * acc[:, :, i] for i in range(splits)])
    den = functools.reduce(jnp.add, [w[i] * l[:, :, i] for i in range(splits)])
    return (num / den[..., None]).astype(qkv.dtype), k_layer, v_layer


def _compiler_params(tiling: Tiling, interpret: bool):
    """Triton's launch settings (interpret mode ignores them, but they stay visible in its jaxpr); none where jax
    no longer ships Triton, which only interpret mode can do without."""
    if TRITON is not None:
        return TRITON.CompilerParams(num_warps=tiling.num_warps, num_stages=tiling.num_stages)
    if not interpret:
        raise ValueError(f"decode_attention='pallas' {no_triton()}")
    return None


def _kernel(starts_ref, index_ref, qkv_ref, cos_ref, sin_ref, norm_ref, k_ref, v_ref, *refs,
            groups, half, scale, eps, normed, rotated, block, splits, operands, transposed, prompt_length):
    shared = prompt_length is not None
    prompt_refs, refs = (refs[:3], refs[3:]) if shared else ((), refs)  # (its start, keys, values)
    out_refs, (ko_ref, vo_ref) = refs[:-2], refs[-2:]  # (out,) or (acc, max, normaliser) per split
    f32, dtype = jnp.float32, qkv_ref.dtype
    first = pl.program_id(2) == 0
    g, lo, hi = groups, pl.ds(0, half), pl.ds(half, half)
    start, index = starts_ref[()], index_ref[()]
    rnd = lambda x: x.astype(dtype).astype(f32)  # the xla path's rounding to the compute dtype

    def prepare(rows, weights):  # [R, H/2] halves -> normalised and rotated halves, as rms_norm then rope
        x1, x2 = rows
        if normed:
            r = jax.lax.rsqrt((jnp.sum(x1 * x1, -1) + jnp.sum(x2 * x2, -1)) / (2 * half) + eps)[:, None]
            x1, x2 = rnd(rnd(x1 * r) * weights[0]), rnd(rnd(x2 * r) * weights[1])
        if rotated:
            cos, sin = cos_ref[...][None, :], sin_ref[...][None, :]
            x1, x2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        return rnd(x1), rnd(x2)

    q1, q2 = prepare((qkv_ref[pl.ds(0, g), lo].astype(f32), qkv_ref[pl.ds(0, g), hi].astype(f32)),
                     (norm_ref[pl.ds(0, g), lo].astype(f32), norm_ref[pl.ds(0, g), hi].astype(f32)))
    k1, k2 = prepare((qkv_ref[pl.ds(g, 1), lo].astype(f32), qkv_ref[pl.ds(g, 1), hi].astype(f32)),
                     (norm_ref[pl.ds(g, 1), lo].astype(f32), norm_ref[pl.ds(g, 1), hi].astype(f32)))
    q1, q2 = rnd(q1 * scale), rnd(q2 * scale)  # the xla path scales the queries in the compute dtype
    k1, k2 = to_cache(k1, ko_ref.dtype), to_cache(k2, ko_ref.dtype)  # [1, H/2] as the cache will hold them
    v_new = to_cache(qkv_ref[pl.ds(g + 1, 1), :], vo_ref.dtype)      # [1, H]

    @pl.when(first)  # one program per row and kv head writes the new slot
    def _():
        ko_ref[pl.ds(index, 1), lo] = k1
        ko_ref[pl.ds(index, 1), hi] = k2
        vo_ref[pl.ds(index, 1), :] = v_new

    # Tensor-core dots want >= 16 rows: the G queries become rows of an [M, H/2] tile, the rest zeros. The
    # padded rows' scores are 0 (finite) and their outputs are dropped at the end.
    rows = max(ROWS, g)
    widen = lambda x: _select_rows(x, jnp.arange(rows)[:, None] == jnp.arange(g)[None, :])     # [G, ..] -> [M, ..]
    narrow = lambda x: _select_rows(x, jnp.arange(g)[:, None] == jnp.arange(rows)[None, :])    # [M, ..] -> [G, ..]
    # exact: q was rounded to dtype above (to float16 operands too, but for |q| < 2^-14: sub-normal there)
    qm1, qm2 = widen(q1).astype(operands), widen(q2).astype(operands)

    # The new slot first (always visible) in split 0, so its running max is finite and its normaliser >= 1;
    # other splits start empty (max -inf, normaliser 0).
    s_new = jnp.sum(q1 * k1.astype(f32), -1) + jnp.sum(q2 * k2.astype(f32), -1)    # [G]
    own = first.astype(f32)  # 1.0 in split 0, else 0.0 (arithmetic: Triton selects want equal shapes)
    m = widen(s_new) + jnp.log(own)  # [M], -inf outside split 0
    norm = jnp.zeros((rows,), f32) + own
    # Scores are [M, BLOCK] and acc [M, H]; transposed, [BLOCK, M] and [H, M] (the cache block the dots' wide
    # side). `over` is the block's axis in scores, `per_query` puts an [M] vector against it.
    over = 0 if transposed else 1
    per_query = lambda x: jnp.expand_dims(x, over)
    v0 = v_new.astype(f32)
    acc = (jnp.broadcast_to(v0.T, (2 * half, rows)) if transposed else jnp.broadcast_to(v0, (rows, 2 * half))) * own
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None  # fp32 models: no TF32
    dot = lambda a, b, a_dim, b_dim: jax.lax.dot_general(a, b, (((a_dim,), (b_dim,)), ((), ())),
                                                         precision=precision, preferred_element_type=f32)

    def step(j, carry, k_ref, v_ref, start, end):  # cache block j of slots [start, end)
        m, norm, acc = carry
        at = pl.multiple_of(j * block, block)
        slots = pl.ds(at, block)
        keys1, keys2 = k_ref[slots, lo].astype(operands), k_ref[slots, hi].astype(operands)  # [BLOCK, H/2]
        values = v_ref[slots, :].astype(operands)                                            # [BLOCK, H]
        at_slot = at + jnp.arange(block)
        seen = (at_slot >= start) & (at_slot < end)
        if transposed:
            scores = dot(keys1, qm1, 1, 1) + dot(keys2, qm2, 1, 1)
        else:
            scores = dot(qm1, keys1, 1, 1) + dot(qm2, keys2, 1, 1)                # fp32
        scores = jnp.where(jnp.broadcast_to(jnp.expand_dims(seen, 1 - over), scores.shape), scores, -jnp.inf)
        m_next = jnp.maximum(m, jnp.max(scores, over))
        shift = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # a split that has seen nothing yet: no inf - inf
        p = jnp.exp(scores - per_query(shift))
        fade = jnp.exp(m - shift)
        # probabilities in the compute dtype for the value dot, as the xla path rounds its softmax
        p_op = p.astype(dtype).astype(operands)
        acc = acc * per_query(fade) + (dot(values, p_op, 0, 0) if transposed else dot(p_op, values, 1, 0))
        return m_next, norm * fade + jnp.sum(p, over), acc

    # The blocks to stream: the shared prompt's (if any), then the row's own up to the new slot (above). Split
    # programs take consecutive shares of that sequence.
    carry = (m, norm, acc)
    lo_block, hi_block = start // block, (index + block - 1) // block
    p_lo = p_count = 0
    if shared:
        p_start = prompt_refs[0][()]
        p_lo = p_start // block
        p_count = (prompt_length + block - 1) // block - p_lo
    share = (p_count + hi_block - lo_block + splits - 1) // splits  # blocks per split
    mine = pl.program_id(2) * share
    mine_end = jnp.minimum(mine + share, p_count + hi_block - lo_block)
    if shared:
        prompt_step = functools.partial(step, k_ref=prompt_refs[1], v_ref=prompt_refs[2], start=p_start,
                                        end=prompt_length)
        carry = jax.lax.fori_loop(p_lo + mine, p_lo + jnp.minimum(mine_end, p_count), prompt_step, carry)
    own_step = functools.partial(step, k_ref=k_ref, v_ref=v_ref, start=start, end=index)  # the new slot: above
    shift = lo_block - p_count
    m, norm, acc = jax.lax.fori_loop(shift + jnp.maximum(mine, p_count), shift + mine_end, own_step, carry)
    acc = acc.T if transposed else acc
    if splits == 1:
        out_refs[0][...] = narrow(acc / norm[:, None]).astype(out_refs[0].dtype)
    else:
        out_refs[0][...], out_refs[1][...], out_refs[2][...] = narrow(acc), narrow(m), narrow(norm)


def _select_rows(x, pick):
    """pick [R, N] one-hot bool, x [N] or [N, C] -> [R] or [R, C]: rows of a register tile by a select and a
    sum over N (Triton has no gather of register rows). A select, not a product: x may hold -inf."""
    x = x[None] if x.ndim == 1 else x[None, :, :]
    pick = pick if x.ndim == 2 else pick[:, :, None]
    shape = pick.shape[:2] + x.shape[2:]
    return jnp.sum(jnp.where(jnp.broadcast_to(pick, shape), jnp.broadcast_to(x, shape), 0.0), axis=1)
