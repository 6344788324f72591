"""Grouped-query attention behind one interface: q, k, v plus a structured AttentionMask, several backends.

Shape letters as in decoder.py: B batch, T queries, S key slots, N query heads, K kv heads, G = N // K, H head dim.

The mask is described, not materialised: causal flag, the key slot of query 0 (cache decode), key validity
(padding) and optional segment ids. A fused kernel can take that as is; the XLA backend builds the boolean
[B, T, S] mask itself, one query chunk at a time.

Backends (ModelConfig.attention):
  "xla"       einsums with fp32 scores and softmax, queries in chunks of `query_chunk` rows (rematerialised
              in the backward pass) so memory is O(query_chunk * S) per head.
  "cudnn"     jax.nn.dot_product_attention(implementation="cudnn") (flash attention, bf16/fp16, CUDA).
  "xla_sdpa"  the same call with implementation="xla": the cudnn path's plumbing, runnable on any device.
  "splash"    JAX's Pallas splash-attention kernel (TPU; Pallas interpret mode on CPU for tests), for
              self-attention over a multiple of 128 tokens with head_dim a multiple of 128 (splash.py).
  "auto"      cudnn on CUDA and splash on TPU where resolve_backend says they support the call, else xla.

Decode (ModelConfig.decode_attention): one new query per row against the cache.
  "xla"       the einsum path over every slot of the cache buffers (the sampler grows its cache segment by
              segment, so early tokens of a long rollout do not read its unwritten end).
  "pallas"    tipjax's Pallas kernel (decode_kernel.py, Triton on GPUs): one launch per layer and step writes
              the new key/value into the cache and attends, each row reading only its filled slots
              [start, index]; off GPU it runs in Pallas interpret mode (tests).
  Both read a shared prompt (cache.PromptCache: the sampler's n samples of a prompt) before the row's own slots:
  xla as n * G query rows of one matmul per prompt and kv head, the kernel from the prompt's one copy.
  "auto"      the kernel on Hopper GPUs where it fits (one-token reads of a whole-block cache with contiguous
              rows, power-of-two heads per kv head and head_dim >= 32), the cache is 16-bit or float8, and
              there is one device or a mesh context (decode_kernel_suits_here), else xla. On an H200 it took
              Qwen3-0.6B decode from 2.39 to 1.98 ms per step at batch 64 (1.26 to 1.11 at batch 8) and the OPD
              step from 4.88 to 4.36 s; over a float8 cache (float16 dot operands, blocks of 128) the step took
              4.00-4.10 s, where xla over float8 took 4.18 s. Other GPUs are not measured (docs/performance.md,
              "Accelerator").

Training over shared prompts (prefixed_attention, for Decoder.hidden_prefixed): rows whose queries follow their
prompt's keys, the prompt run once for its n rows; xla reads its keys once per prompt, the fused backends take
each row's whole causal sequence.

cuDNN's query/key lengths assume right padding, and tipjax's prompts are left padded, so the cudnn path
never passes lengths: a mask with padding, a cache offset or segments goes in as a dense [B, 1, T, S]
boolean mask (jax turns it into a finite bias, so a query that sees no key gets a uniform, finite softmax,
as with xla). Only self-attention without padding (causal or not) goes in as the is_causal flag alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.extend import backend as jax_backend

from tipjax.models import decode_kernel, splash
from tipjax.models.cache import LayerCache, to_cache
from tipjax.models.config import ATTENTION_BACKENDS as BACKENDS
from tipjax.models.config import DECODE_ATTENTION_BACKENDS, DEFAULT_QUERY_CHUNK

# Finite "minus infinity": a query with no visible key (e.g. left padding) gets a uniform, finite softmax.
_MASKED = -1e30
_CUDNN_DTYPES = ("bfloat16", "float16")


@struct.dataclass
class AttentionMask:
    """Which key slots each query sees. Query j of a call sits at key slot q_offset + j and sees slot s iff

        (not causal or s <= q_offset + j) and kv_valid[b, s] and q_segments[b, j] == kv_segments[b, s]

    kv_valid:    [B, S] bool or None (all valid): padding and unwritten cache slots are False.
    q_offset:    [] int32 (may be traced) or None for 0: the key slot of query 0 (the cache index).
    q_segments, kv_segments: [B, T] and [B, S] int32, both or neither (packed sequences).
    causal:      static.
    """

    kv_valid: jax.Array | None = None
    q_offset: jax.Array | None = None
    q_segments: jax.Array | None = None
    kv_segments: jax.Array | None = None
    causal: bool = struct.field(pytree_node=False, default=True)

    def __post_init__(self):
        if (self.q_segments is None) != (self.kv_segments is None):
            raise ValueError("AttentionMask needs both q_segments and kv_segments, or neither")

    def dense(self, t: int, s: int) -> jax.Array:
        """The boolean mask [B or 1, t, s] of queries 0 .. t-1 over the first s key slots."""
        return _visible(self, 0, t, s, self.q_segments)

    @property
    def needs_dense(self) -> bool:
        """Whether a kernel with only an is_causal flag needs the dense mask: padding, segments, cache offset."""
        return self.kv_valid is not None or self.q_segments is not None or (self.causal and self.q_offset is not None)


def current_platform() -> str:
    """"cuda", "rocm", "cpu", "tpu", ...: the default backend, with GPUs told apart (cuDNN is CUDA only)."""
    platform = jax.default_backend()
    if platform == "gpu":
        version = jax_backend.get_backend().platform_version.lower()
        return "cuda" if "cuda" in version else "rocm"
    return platform


def resolve_backend(requested: str, platform: str, dtype, head_dim: int, *, dense_mask: bool = False,
                    t: int = 2, s: int = 2, q_offset: bool = False) -> str:
    """The backend that runs: "xla", "cudnn", "xla_sdpa" or "splash". Pure, so every case is testable on CPU.

    "auto" picks cudnn on CUDA for bf16/fp16 with head_dim a multiple of 8 up to 128 (cuDNN's limit before
    Hopper) and, when a dense mask goes in as a bias, even t and s (cuDNN's bias rule for training); on TPU
    it picks splash where splash.fits (self-attention, no cache offset q_offset, t a multiple of 128, head_dim
    a multiple of 128); everything else (fp32 on GPU, CPU, single-token decode) runs xla. An explicit "cudnn"
    or "splash" that cannot run is an error rather than a silent fallback.
    """
    if requested not in BACKENDS:
        raise ValueError(f"attention backend {requested!r} is not one of {BACKENDS}")
    dtype = jnp.dtype(dtype).name
    if requested == "cudnn":
        if platform != "cuda" or dtype not in _CUDNN_DTYPES:
            raise ValueError(f"attention='cudnn' needs a CUDA GPU and bfloat16/float16 inputs, got platform "
                             f"{platform!r} and {dtype}; use attention='auto' or 'xla'")
        return "cudnn"
    splash_fits = splash.fits(t=t, s=s, head_dim=head_dim, q_offset_given=q_offset)
    if requested == "splash":
        if platform not in ("tpu", "cpu") or not splash_fits:
            raise ValueError(f"attention='splash' needs a TPU (CPU: interpret mode) and self-attention over a "
                             f"multiple of {splash.BLOCK} tokens with head_dim a multiple of 128, got platform "
                             f"{platform!r}, t={t}, s={s}, head_dim={head_dim}, cache offset={q_offset}; use "
                             f"attention='auto' or 'xla'")
        return "splash"
    if requested != "auto":
        return requested
    if platform == "tpu" and splash_fits and dtype in ("bfloat16", "float32"):
        return "splash"
    supported = (platform == "cuda" and dtype in _CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= 128
                 and not (dense_mask and (t % 2 or s % 2)))
    return "cudnn" if supported else "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, *, backend: str = "xla",
              query_chunk: int = DEFAULT_QUERY_CHUNK) -> jax.Array:
    """q [B, T, N, H], k and v [B, S, K, H] (same dtype), mask -> [B, T, N, H] in the dtype of q.

    Query head n uses kv head n // G, as HF's repeat_kv.
    """
    t, s = q.shape[1], k.shape[1]
    platform = current_platform()
    impl = resolve_backend(backend, platform, q.dtype, q.shape[-1], dense_mask=mask.needs_dense, t=t, s=s,
                           q_offset=mask.q_offset is not None)
    if impl == "xla":
        return _xla_attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask, query_chunk)
    if impl == "splash":
        return splash.attention(q, k, v, mask.kv_valid, mask.q_segments, mask.kv_segments, causal=mask.causal,
                                interpret=platform != "tpu")
    implementation = "cudnn" if impl == "cudnn" else "xla"
    if not mask.needs_dense:
        return jax.nn.dot_product_attention(q, k, v, is_causal=mask.causal, implementation=implementation)
    # is_causal on top of the dense mask lets cuDNN skip the blocks above the diagonal (offset 0 only).
    return jax.nn.dot_product_attention(q, k, v, mask=mask.dense(t, s)[:, None],
                                        is_causal=mask.causal and mask.q_offset is None,
                                        implementation=implementation)


def resolve_decode_backend(requested: str, platform: str, *, t: int, s: int, head_dim: int,
                           contiguous: bool, groups: int = 1, cache_bytes: int = 2, here: bool = True,
                           prompt_slots: int = 0, triton: bool = True) -> str:
    """The backend of a cache read: "xla" or "pallas". Pure, so every case is testable on CPU.

    "pallas" needs a one-token read (t == 1) of a cache whose rows are contiguous (LayerCache.starts given),
    whose length (and a shared prompt's, `prompt_slots`) is a multiple of the kernel's block
    (decode_kernel.default_tiling), with a power-of-two head_dim >= 32
    and query heads per kv head (Triton tensor shapes); requested where it cannot run, it is an error. "auto"
    takes it on CUDA where it fits, the cache's elements are `cache_bytes` = 2 or 1 bytes (bf16/fp16 or float8:
    where it was measured faster; fp32 was not) and it suits the devices `here` (decode_kernel_suits_here:
    Hopper, per device), else xla. `triton`: this jax ships Pallas's Triton backend (decode_kernel.TRITON), which
    the kernel needs on GPUs.
    """
    if requested not in DECODE_ATTENTION_BACKENDS:
        raise ValueError(f"decode attention backend {requested!r} is not one of {DECODE_ATTENTION_BACKENDS}")
    block = decode_kernel.default_tiling(cache_bytes).block
    fits = t == 1 and contiguous and decode_kernel.fits(groups, head_dim, s, block) and prompt_slots % block == 0
    if requested == "pallas" and platform == "tpu":
        raise ValueError("decode_attention='pallas' is a Triton kernel for GPUs (interpret mode elsewhere, for tests); "
                         "on TPU use 'xla' or 'auto'")
    if requested == "pallas":
        if platform in ("cuda", "rocm") and not triton:
            raise ValueError(f"decode_attention='pallas' {decode_kernel.no_triton()}")
        if not fits:
            raise ValueError(f"decode_attention='pallas' needs one query per row, contiguous rows (starts), a cache "
                             f"length (and shared prompt length) that is a multiple of {block} and power-of-two "
                             f"head_dim >= 32 and query heads per kv head; got t={t}, contiguous={contiguous}, "
                             f"s={s}, prompt slots={prompt_slots}, head_dim={head_dim}, groups={groups}")
        return "pallas"
    auto = platform == "cuda" and triton and fits and cache_bytes in (1, 2) and here
    return "pallas" if requested == "auto" and auto else "xla"


def decode_backend_here(requested: str, *, t: int, s: int, head_dim: int, groups: int, contiguous: bool,
                        cache_dtype, prompt_slots: int = 0) -> str:
    """resolve_decode_backend for a cache read traced here: this trace's platform and devices, the cache's
    element size."""
    return resolve_decode_backend(requested, current_platform(), t=t, s=s, head_dim=head_dim, contiguous=contiguous,
                                  groups=groups, cache_bytes=jnp.dtype(cache_dtype).itemsize,
                                  here=decode_kernel_suits_here(), prompt_slots=prompt_slots,
                                  triton=decode_kernel.TRITON is not None)


def model_decode_backend(cfg, *, t: int, s: int, contiguous: bool, cache_dtype, prompt_slots: int = 0) -> str:
    """decode_backend_here for a ModelConfig's heads and decode_attention."""
    return decode_backend_here(cfg.decode_attention, t=t, s=s, head_dim=cfg.head_dim,
                               groups=cfg.num_heads // cfg.num_kv_heads, contiguous=contiguous,
                               cache_dtype=cache_dtype, prompt_slots=prompt_slots)


def decode_kernel_suits_here() -> bool:
    """Whether "auto" may take the decode kernel for a call traced here: Hopper GPUs (compute capability 9.x,
    where it was measured; Triton's code for other generations is not), and a Triton call that runs on each
    device's own shard: one device, or a mesh context (jax.set_mesh, as the trainer sets) for decode_kernel's
    shard_map. Without one, XLA would gather operands split over several devices for the call."""
    per_device = jax.device_count() == 1 or not jax.sharding.get_abstract_mesh().empty
    if jax.default_backend() != "gpu":
        return per_device  # off GPUs resolve_decode_backend's platform check decides the rest
    return per_device and getattr(jax.devices()[0], "compute_capability", "0").split(".")[0] == "9"


def decode_cache_slots(total: int, decode_backend: str, cache_bytes: int = 2) -> int:
    """KV-cache length for `total` tokens: whole blocks of the Pallas kernel's tiling for the cache's element size
    (decode_kernel.default_tiling; the slots past `total` are never written or read), exactly `total` otherwise
    (padding only costs xla time)."""
    block = decode_kernel.default_tiling(cache_bytes).block if decode_backend == "pallas" else 1
    return -(-total // block) * block


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache: LayerCache, *, backend: str = "xla",
                     query_chunk: int = DEFAULT_QUERY_CHUNK,
                     decode_backend: str = "xla") -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Writes this call's k, v [B, T, K, H] into the layer's cache at cache.index and attends over it.

    Returns (out [B, T, N, H], (k_layer, v_layer) [B, K, S, H]). With cache.fresh (an empty cache) queries
    attend over the T new keys only ([T, T] scores, not [T, S]); otherwise over all S slots (xla; never a
    slice of them, which XLA:GPU would copy per layer and step) or each row's filled range (pallas, see
    LayerCache.starts).
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    if not cache.fresh:
        impl = decode_backend_here(decode_backend, t=t, s=cache.k.shape[2], head_dim=h, groups=n // kv_heads,
                                   contiguous=cache.starts is not None, cache_dtype=cache.k.dtype,
                                   prompt_slots=prompt_slots(cache))
        if impl == "pallas":  # writes the cache and attends in one kernel (q and k already normed and rotated)
            qkv = jnp.concatenate([q[:, 0].reshape(b, kv_heads, n // kv_heads, h), k[:, 0, :, None],
                                   v[:, 0, :, None]], axis=2)
            out, k_layer, v_layer = decode_kernel.attend(qkv, cache.k, cache.v, cache.starts, cache.index,
                                                         prompt=cache.prompt)
            return out.reshape(b, 1, n, h), (k_layer, v_layer)
    at = (0, 0, cache.index, 0)
    k_layer = jax.lax.dynamic_update_slice(cache.k, to_cache(k.swapaxes(1, 2), cache.k.dtype), at)
    v_layer = jax.lax.dynamic_update_slice(cache.v, to_cache(v.swapaxes(1, 2), cache.v.dtype), at)
    if cache.fresh:
        if cache.prompt is not None:
            raise ValueError("a fresh cache (prefill) cannot have a shared prompt: prefill the prompts themselves")
        # Index 0 is promised, so slots [0, T) of the mask are this call's tokens and the offset is static.
        out = attention(q, k, v, AttentionMask(kv_valid=cache.mask[:, :t]), backend=backend,
                        query_chunk=query_chunk)
        return out, (k_layer, v_layer)
    mask = AttentionMask(kv_valid=cache.mask, q_offset=cache.index)
    keys, values = k_layer.astype(q.dtype), v_layer.astype(q.dtype)
    if cache.prompt is not None:
        visible = _visible(mask, 0, t, keys.shape[2], None)
        prompt = cache.prompt
        return _shared_prompt_attention(q, keys, values, visible, prompt.k, prompt.v, prompt.mask), (k_layer, v_layer)
    if resolve_backend(backend, current_platform(), q.dtype, q.shape[-1], dense_mask=True, t=t,
                       s=keys.shape[2]) == "xla":
        return _xla_attention(q, keys, values, mask, query_chunk), (k_layer, v_layer)
    # A cached read with several queries (chunked prefill) on a fused backend: its [B, S, K, H] layout.
    return attention(q, keys.swapaxes(1, 2), values.swapaxes(1, 2), mask, backend=backend,
                     query_chunk=query_chunk), (k_layer, v_layer)


def prefixed_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_valid: jax.Array, prompt_k: jax.Array,
                       prompt_v: jax.Array, prompt_valid: jax.Array, *, backend: str = "xla",
                       query_chunk: int = DEFAULT_QUERY_CHUNK) -> jax.Array:
    """Rows that continue shared prompts (a training forward over a prompt's n samples): queries q [B, T, N, H] at the
    T slots after their prompt see all of prompt b // n's real keys prompt_k, prompt_v [P, Tp, K, H] (prompt_valid
    [P, Tp]) and their own keys k, v [B, T, K, H] causally where kv_valid [B, T]. Equals attention() over each row's
    prompt-then-row sequence, for the row's queries -> [B, T, N, H].

    xla reads each prompt's keys once for its n rows (_shared_prompt_attention, query chunks as _xla_attention).
    A fused backend gets the row's whole sequence, the prompt's keys repeated and its query slots zero: the plain
    causal self-attention that cuDNN and splash take (the prompt queries' work, (Tp / (Tp + T))^2 of the causal
    call's, is thrown away), whose output rows after the prompt are the answer.
    """
    b, t, n, h = q.shape
    p, tp = prompt_k.shape[:2]
    if b % p:
        raise ValueError(f"prefixed_attention: {b} rows are not a multiple of {p} prompts")
    impl = resolve_backend(backend, current_platform(), q.dtype, h, dense_mask=True, t=tp + t, s=tp + t)
    if impl == "xla":
        mask = AttentionMask(kv_valid=kv_valid.astype(jnp.bool_))
        prefix = (prompt_k.swapaxes(1, 2), prompt_v.swapaxes(1, 2), prompt_valid.astype(jnp.bool_))
        return _xla_attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask, query_chunk, prefix)
    rep = b // p

    def whole(prompt_part, row_part):
        return jnp.concatenate([jnp.repeat(prompt_part, rep, axis=0), row_part.astype(prompt_part.dtype)], axis=1)

    valid = whole(prompt_valid.astype(jnp.bool_), kv_valid)
    queries = jnp.concatenate([jnp.zeros((b, tp, n, h), q.dtype), q], axis=1)
    out = attention(queries, whole(prompt_k, k), whole(prompt_v, v), AttentionMask(kv_valid=valid), backend=backend,
                    query_chunk=query_chunk)
    return out[:, tp:]


def prompt_slots(cache: LayerCache) -> int:
    """Slots of a layer cache's shared prompt (0 without one)."""
    return 0 if cache.prompt is None else cache.prompt.k.shape[2]


def _visible(mask: AttentionMask, start, t: int, s: int, q_segments: jax.Array | None) -> jax.Array:
    """[B or 1, t, s] bool for queries start .. start+t-1 (q_segments: theirs, [B, t])."""
    visible = jnp.ones((1, t, s), jnp.bool_)
    if mask.causal:
        offset = 0 if mask.q_offset is None else jnp.asarray(mask.q_offset)[..., None]
        q_slot = offset + start + jnp.arange(t)
        visible = jnp.arange(s) <= q_slot[..., None]
        visible = visible if visible.ndim == 3 else visible[None]
    if mask.kv_valid is not None:
        visible = visible & mask.kv_valid[:, None, :s].astype(jnp.bool_)
    if q_segments is not None:
        visible = visible & (q_segments[:, :, None] == mask.kv_segments[:, None, :s])
    return visible


def _xla_attention(q, k, v, mask: AttentionMask, query_chunk: int, prefix=None) -> jax.Array:
    """q [B, T, N, H], heads-major k, v [B, K, S, H] -> [B, T, N, H]. prefix: (k, v, valid) of shared prompts read
    before the rows' own keys (see _shared_prompt_attention)."""
    t, s = q.shape[1], k.shape[2]

    def attend(q_chunk, visible):
        if prefix is None:
            return _attention_block(q_chunk, k, v, visible)
        return _shared_prompt_attention(q_chunk, k, v, visible, *prefix)

    if t <= query_chunk:
        return attend(q, _visible(mask, 0, t, s, mask.q_segments))
    pad = -t % query_chunk

    def split(x):  # [B, T, ...] -> [T / C, B, C, ...], T padded to a multiple of C
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(x.shape[0], -1, query_chunk, *x.shape[2:]).swapaxes(0, 1)

    def block(args):
        q_chunk, start, q_segments = args
        return attend(q_chunk, _visible(mask, start, query_chunk, s, q_segments))

    starts = jnp.arange(0, t + pad, query_chunk)
    segments = None if mask.q_segments is None else split(mask.q_segments)
    out = jax.lax.map(jax.checkpoint(block), (split(q), starts, segments))
    return out.swapaxes(0, 1).reshape(q.shape[0], t + pad, *q.shape[2:])[:, :t]


def _attention_block(q, k, v, visible) -> jax.Array:
    """q [B, T, N, H], heads-major k and v [B, K, S, H], visible [B or 1, T, S] bool -> [B, T, N, H]; fp32
    softmax."""
    b, t, n, h = q.shape
    q = _grouped_queries(q, k.shape[1])
    scores = _row_scores(q, k, visible)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BKSH->BKGTH", probs, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _grouped_queries(q, kv_heads: int) -> jax.Array:
    """q [B, T, N, H] -> [B, K, G, T, H] scaled by H^-0.5 in its dtype. Heads-major operands make the einsums plain
    batched matmuls (~1.6x faster on XLA:CPU than [B, T, ...])."""
    b, t, n, h = q.shape
    return q.reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4) * jnp.asarray(h**-0.5, q.dtype)


def _row_scores(q, k, visible) -> jax.Array:
    """Grouped queries [B, K, G, T, H] against heads-major keys [B, K, S, H] -> fp32 scores [B, K, G, T, S], the
    slots not `visible` ([B or 1, T, S]) at a finite minimum."""
    scores = jnp.einsum("BKGTH,BKSH->BKGTS", q, k, preferred_element_type=jnp.float32)
    return jnp.where(visible[:, None, None], scores, _MASKED)


def _shared_prompt_attention(q, k, v, visible, prompt_k, prompt_v, prompt_valid) -> jax.Array:
    """q [B, T, N, H] over shared prompts' heads-major keys prompt_k, prompt_v [P, K, Sp, H] (prompt_valid [P, Sp])
    then the rows' own heads-major k, v [B, K, S, H] (visible [B or 1, T, S]) -> [B, T, N, H]: one softmax over
    both. Row b's queries meet prompt b // n's keys as n * G * T rows of one matmul per prompt and kv head, so each
    prompt's keys are read once, not once per row."""
    b, t, n, h = q.shape
    kv_heads, p = k.shape[1], prompt_k.shape[0]
    g, samples = n // kv_heads, b // p
    q = _grouped_queries(q, kv_heads)
    qp = q.reshape(p, samples, kv_heads, g, t, h)
    kp, vp = prompt_k.astype(q.dtype), prompt_v.astype(v.dtype)
    f32 = jnp.float32
    scores_p = jnp.einsum("PnKGTH,PKSH->PnKGTS", qp, kp, preferred_element_type=f32)
    scores_p = jnp.where(prompt_valid[:, None, None, None, None, :], scores_p, _MASKED)
    scores_p = scores_p.reshape(b, kv_heads, g, t, -1)
    scores = _row_scores(q, k, visible)
    # The shift only keeps exp in range; its gradient is zero in exact arithmetic, so none flows through it.
    top = jax.lax.stop_gradient(jnp.maximum(jnp.max(scores_p, -1, keepdims=True), jnp.max(scores, -1, keepdims=True)))
    e_p, e = jnp.exp(scores_p - top), jnp.exp(scores - top)
    total = jnp.sum(e_p, -1, keepdims=True) + jnp.sum(e, -1, keepdims=True)
    # probabilities rounded to the values' dtype, as _attention_block's softmax
    probs_p = (e_p / total).astype(v.dtype).reshape(p, samples, kv_heads, g, t, -1)
    if current_platform() == "cpu" and vp.dtype != f32:
        # XLA:CPU of jax 0.12 runs this product (its operands swapped, contracting the values' slots) in a DotThunk
        # without a bf16 x bf16 -> f32 kernel: UNIMPLEMENTED at run time. The same products in f32 run anywhere.
        probs_p, vp = probs_p.astype(f32), vp.astype(f32)
    out = (jnp.einsum("PnKGTS,PKSH->PnKGTH", probs_p, vp, preferred_element_type=f32).reshape(b, kv_heads, g, t, h)
           + jnp.einsum("BKGTS,BKSH->BKGTH", (e / total).astype(v.dtype), v, preferred_element_type=f32))
    return out.astype(q.dtype).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
