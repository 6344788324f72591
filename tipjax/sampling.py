"""KV-cache rollout sampler: a state struct, a prefill, and one `lax.while_loop`.

Shapes: B rows, Tp prompt columns (left padded), N = max_new_tokens, S = Tp + N cache slots (at the end: the
cache grows segment by segment), V vocabulary.

`generate` is a pure function of arrays and static settings. Called eagerly it pads the prompt to its
length bucket and runs one compiled program (prefill and decode loop) per (bucket, settings); called inside an
outer `jax.jit` (the trainer's step) it simply traces into that program. Sampling semantics, applied in this
order to the model's fp32 next-token logits z:

- temperature t: z / t. `temperature=0` means greedy (argmax; top-k/top-p are then irrelevant).
- top_k = k > 0: keep the tokens whose logit is >= the k-th largest logit (ties at the boundary are kept).
- top_p = p < 1: on the distribution left after temperature and top-k, keep the smallest set of most
  probable tokens whose total probability reaches p: token i survives iff the mass of the tokens strictly
  more probable than it is < p (so the most probable token always survives; ties survive together).
- draw from the renormalised survivors (inverse CDF: one uniform number per row).

`out.logprobs` holds log p(token) under the model's *unmodified* distribution (temperature 1, no
filtering): the quantity the trainer's student forward reproduces.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from tipjax.models import attention, positions_from_mask
from tipjax.models.cache import PromptCache, check_cache_dtype

__all__ = ["SampleOutput", "SamplerState", "DecodeSettings", "generate", "bucket_size", "DEFAULT_BUCKETS",
           "sample_logits"]

# Powers of two: the prompt length of a batch is rounded up to one of these, so compiles stay bounded.
DEFAULT_BUCKETS = tuple(2**i for i in range(4, 16))


@flax.struct.dataclass
class SampleOutput:
    tokens: jax.Array          # [B, S] int32: prompt (left padded) then response, pad after the first EOS
    response_mask: jax.Array   # [B, S] int32: 1 on generated tokens up to and including the first EOS
    logprobs: jax.Array        # [B, S] fp32: log p(token) under the unmodified model on response tokens, else 0
    lengths: jax.Array         # [B] int32: number of response tokens
    truncated: jax.Array       # [B] bool: no EOS within max_new_tokens


@flax.struct.dataclass
class SamplerState:
    """Everything the decode loop carries; the KV cache is updated in place by XLA."""

    step: jax.Array            # [] int32: tokens generated so far
    tokens: jax.Array          # [B, S] int32
    response_mask: jax.Array   # [B, S] int32
    logprobs: jax.Array        # [B, S] fp32
    done: jax.Array            # [B] bool
    positions: jax.Array       # [B] int32: position id of the next token
    next_logits: jax.Array     # [B, V] fp32: logits for the token about to be sampled
    starts: jax.Array          # [B] int32: the cache slot of each row's first real prompt token
    cache: object              # models.KVCache
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """The decode loop's static configuration: hashable, so one compiled loop per distinct value."""

    prompt_len: int               # Tp after bucketing: the column of the first response token
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    eos_ids: tuple[int, ...]
    pad_id: int
    segments: int | None = None   # see segment_ends
    steps_per_loop: int = 1       # tokens per while-loop iteration (see loop_length)
    prompt_samples: int = 1       # > 1: rows per prompt that share one copy of its keys (models.PromptCache)


def bucket_size(length: int, buckets: Sequence[int] | None = None) -> int:
    """The smallest bucket >= length; a clear error when the prompt is longer than every bucket."""
    buckets = tuple(sorted(buckets or DEFAULT_BUCKETS))
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"prompt length {length} is longer than the largest bucket {buckets[-1]}; "
                     f"truncate the prompt or configure a larger bucket")


def sample_logits(rng: jax.Array, logits: jax.Array, *, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Draws one token per row from fp32 logits [B, V] with the module's documented semantics -> [B] int32."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    neg_inf = jnp.finfo(logits.dtype).min
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, neg_inf)
    if top_p < 1.0:
        probs = jax.nn.softmax(logits, axis=-1)
        sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        # The least probable survivor in sorted order; everything at least as probable survives.
        n_keep = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(sorted_probs, n_keep - 1, axis=-1)
        logits = jnp.where(probs >= threshold, logits, neg_inf)
    return _inverse_cdf(rng, logits)


def _inverse_cdf(rng: jax.Array, logits: jax.Array) -> jax.Array:
    """One uniform draw per row against the cumulative distribution -> [B] int32.

    Exact sampling, like Gumbel-max, but with B random numbers per step instead of B * V.
    """
    probs = jax.nn.softmax(logits, axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    u = jax.random.uniform(rng, logits.shape[:-1] + (1,)) * cdf[..., -1:]
    token = jnp.sum(cdf <= u, axis=-1)
    # Rounding can put u at the very top of the cdf: fall back to the last token with any mass.
    last = logits.shape[-1] - 1 - jnp.argmax((probs > 0)[..., ::-1], axis=-1)
    return jnp.minimum(token, last).astype(jnp.int32)


def _is_eos(tokens: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    if not eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32))


def default_steps_per_loop() -> int:
    """Tokens per decode-loop iteration: on GPU each iteration ends with a device-to-host read of the loop
    condition, so several tokens per iteration (an inner loop of static length) hide that round trip."""
    return 1 if jax.default_backend() == "cpu" else 8


def loop_length(max_new_tokens: int, steps_per_loop: int) -> int:
    """Decode steps actually run: max_new_tokens rounded up to whole iterations (the extra are discarded)."""
    return -(-max_new_tokens // steps_per_loop) * steps_per_loop


def _prefill(model, prompt_ids, prompt_mask, max_new_tokens, cache_dtype, rng, samples: int,
             decode_backend: str) -> SamplerState:
    """The prompts' keys and their next-token logits. samples > 1: prompt_ids are P distinct prompts for
    P * samples rows, which share their prompt's keys (KVCache.prompt; slots rounded to the decode kernel's
    block) and start with empty caches of their own; else one row per prompt, its prompt in its own cache."""
    prompt_len = prompt_ids.shape[1]
    total = prompt_len + max_new_tokens
    mask = prompt_mask.astype(bool)
    positions = positions_from_mask(mask)  # left padding: each row starts at 0 at its first real token
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    slots = prompt_len
    if samples > 1:
        cache_bytes = jnp.dtype(cache_dtype or model.config.compute_dtype).itemsize
        slots = attention.decode_cache_slots(prompt_len, decode_backend, cache_bytes)
    # The prompt's slots only: the decode loop grows the cache segment by segment (_decode_loop).
    cache = model.init_cache(prompt_ids.shape[0], slots, dtype=cache_dtype)
    hidden, cache = model.hidden_cached(prompt_ids, positions, cache, mask, fresh=True)
    # The last column is every row's last real prompt token (left padding), so its logits predict token 1.
    next_logits = model.logits(hidden[:, -1])
    starts = prompt_len - lengths
    if samples > 1:
        prompt = PromptCache(k=cache.k, v=cache.v, mask=cache.mask, starts=starts, length=prompt_len)
        cache = model.init_cache(prompt_ids.shape[0] * samples, 0, dtype=cache_dtype).replace(prompt=prompt)
        prompt_ids, lengths, next_logits = (jnp.repeat(x, samples, axis=0) for x in (prompt_ids, lengths, next_logits))
        starts = jnp.zeros_like(lengths)  # the rows' own slots hold their responses, from slot 0
    batch = prompt_ids.shape[0]
    tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(prompt_ids)
    return SamplerState(
        step=jnp.zeros((), jnp.int32), tokens=tokens,
        response_mask=jnp.zeros((batch, total), jnp.int32), logprobs=jnp.zeros((batch, total), jnp.float32),
        done=jnp.zeros((batch,), bool), positions=lengths, next_logits=next_logits, starts=starts, cache=cache,
        rng=rng)


def segment_ends(max_new_tokens: int, segments: int | None = None) -> tuple[int, ...]:
    """Where the decode loop's segments end. Segment j attends over prompt + ends[j] cache slots only.

    Default: one segment per 256 new tokens, at most 4 (each segment is its own compiled loop body).
    """
    if segments is None:
        segments = min(4, -(-max_new_tokens // 256))
    segments = max(1, min(segments, max_new_tokens))
    return tuple(-(-max_new_tokens * (j + 1) // segments) for j in range(segments))


def _decode_backend(cfg, settings: DecodeSettings, cache_dtype) -> str:
    """The decode loop's attention ("xla" or "pallas"), asked as if the cache were the kernel's (whole blocks):
    "auto" takes the kernel where it fits."""
    steps = loop_length(settings.max_new_tokens, settings.steps_per_loop)
    cache_dtype = cache_dtype or cfg.compute_dtype
    cache_bytes = jnp.dtype(cache_dtype).itemsize
    slots = lambda n: attention.decode_cache_slots(n, "pallas", cache_bytes)
    shared = settings.prompt_samples > 1
    own = steps + (0 if shared else settings.prompt_len)
    return attention.model_decode_backend(cfg, t=1, s=slots(own), contiguous=True, cache_dtype=cache_dtype,
                                          prompt_slots=slots(settings.prompt_len) if shared else 0)


def _decode_loop(model, state: SamplerState, settings: DecodeSettings, kernel: str) -> SamplerState:
    # Segments: a sequence of while loops, each on a cache grown to hold exactly the slots it can fill, so early
    # tokens of a long rollout do not read the unwritten end of the cache, and attention reads whole buffers
    # (a window sliced out of a longer one is a copy per layer and step on XLA:GPU). The Pallas kernel reads
    # only the filled slots, so it runs one segment on a cache of whole kernel blocks. Each segment stops early
    # when every row has finished.
    k = settings.steps_per_loop
    steps = loop_length(settings.max_new_tokens, k)
    cache_bytes = jnp.dtype(state.cache.k[0].dtype).itemsize
    prompt_slots = 0 if state.cache.prompt is not None else settings.prompt_len  # in the rows' own cache
    segments = 1 if kernel == "pallas" and settings.segments is None else settings.segments
    layers = model.decode_layers()  # sliced and stacked once here, not per layer and token inside the loop
    for end in sorted({loop_length(e, k) for e in segment_ends(steps, segments)}):
        slots = attention.decode_cache_slots(prompt_slots + end, kernel, cache_bytes)
        state = state.replace(cache=state.cache.grow(slots))
        state = _decode_segment(model, layers, state, settings, end)
    return state


def _decode_segment(model, layers, state: SamplerState, settings: DecodeSettings, end: int) -> SamplerState:
    def cond(s: SamplerState):
        return (s.step < end) & ~jnp.all(s.done)

    def body(s: SamplerState) -> SamplerState:
        if settings.steps_per_loop == 1:
            return one_token(s)
        # A loop of static length: XLA runs it without reading a condition back to the host.
        return jax.lax.fori_loop(0, settings.steps_per_loop, lambda _, x: one_token(x), s)

    def one_token(s: SamplerState) -> SamplerState:
        rng, key = jax.random.split(s.rng)
        token = sample_logits(key, s.next_logits, temperature=settings.temperature, top_k=settings.top_k,
                              top_p=settings.top_p)
        live = ~s.done
        token = jnp.where(live, token, settings.pad_id)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(s.next_logits, axis=-1), token[:, None], axis=-1)[:, 0]
        col = settings.prompt_len + s.step
        tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, col))
        response_mask = jax.lax.dynamic_update_slice(s.response_mask, live.astype(jnp.int32)[:, None], (0, col))
        logprobs = jax.lax.dynamic_update_slice(s.logprobs, jnp.where(live, logprob, 0.0)[:, None], (0, col))
        done = s.done | (live & _is_eos(token, settings.eos_ids))
        hidden, cache = model.hidden_cached(token[:, None], s.positions[:, None], s.cache, live[:, None],
                                            starts=s.starts, layers=layers)
        return SamplerState(
            step=s.step + 1, tokens=tokens, response_mask=response_mask, logprobs=logprobs, done=done,
            positions=s.positions + 1, next_logits=model.logits(hidden[:, 0]), starts=s.starts, cache=cache,
            rng=rng)

    return jax.lax.while_loop(cond, body, state)


def _generate(model, prompt_ids, prompt_mask, rng, settings: DecodeSettings, cache_dtype) -> SamplerState:
    """Prefill and decode loop: the whole rollout, one traceable function (the prompt's cache is an
    intermediate, freed once the first segment has grown it)."""
    steps = loop_length(settings.max_new_tokens, settings.steps_per_loop)
    kernel = _decode_backend(model.config, settings, cache_dtype)
    state = _prefill(model, prompt_ids, prompt_mask, steps, cache_dtype, rng, settings.prompt_samples, kernel)
    return _decode_loop(model, state, settings, kernel)


_jit_generate = jax.jit(_generate, static_argnames=("settings", "cache_dtype"))


def _validate(prompt_ids, prompt_mask, max_new_tokens, temperature, top_k, top_p, num_samples):
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_ids and prompt_mask must both be [B, Tp]; got {prompt_ids.shape} and "
                         f"{prompt_mask.shape}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0 (0 is greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if _concrete(prompt_mask):
        lengths = np.asarray(prompt_mask).sum(axis=1)
        if (lengths == 0).any():
            raise ValueError(f"prompt rows {np.flatnonzero(lengths == 0).tolist()} are empty (prompt_mask all 0)")
        last = np.asarray(prompt_mask)[:, -1]
        if not last.all():
            raise ValueError("prompts must be left padded: prompt_mask[:, -1] must be 1 for every row")


def _concrete(x) -> bool:
    """Values readable here: not traced (outer jit) and not spread over other hosts."""
    return not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


def _check_ids(prompt_ids, vocab_size: int) -> None:
    """Integer ids in [0, vocab_size), padding included: jnp.take embeds an id >= V as NaN (whose key/value
    then poisons the row's attention) and wraps negative ones silently. Values are checked when concrete."""
    concrete = _concrete(prompt_ids)
    if not jnp.issubdtype(prompt_ids.dtype, jnp.integer):
        sample = f" such as {np.asarray(prompt_ids).ravel()[:3].tolist()}" if concrete else ""
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}{sample}")
    if not concrete:
        return
    ids = np.asarray(prompt_ids)
    bad = np.argwhere((ids < 0) | (ids >= vocab_size))
    if bad.size:
        where = ", ".join(f"{ids[tuple(i)]} at {tuple(i.tolist())}" for i in bad[:3])
        raise ValueError(f"prompt_ids holds {len(bad)} id(s) outside the vocabulary [0, {vocab_size}): {where}"
                         f"{' ...' if len(bad) > 3 else ''}")


def _special_ids(eos_token_id, pad_token_id, vocab_size: int) -> tuple[tuple[int, ...], int]:
    """(eos ids, pad id), each checked to lie in [0, vocab_size)."""
    eos_ids = tuple(int(e) for e in np.atleast_1d(eos_token_id)) if eos_token_id is not None else ()
    pad_id = int(pad_token_id) if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    for name, values in (("eos_token_id", eos_ids), ("pad_token_id", (pad_id,))):
        bad = [e for e in values if not 0 <= e < vocab_size]
        if bad:
            raise ValueError(f"{name} {bad} outside the vocabulary [0, {vocab_size})")
    return eos_ids, pad_id


def generate(model, prompt_ids: jax.Array, prompt_mask: jax.Array, *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_id: int | Sequence[int] | None = None, rng: jax.Array,
             num_samples: int = 1, pad_token_id: int | None = None, buckets: Sequence[int] | None = None,
             cache_dtype=None, segments: int | None = None, steps_per_loop: int | None = None,
             share_prompt: bool = True) -> SampleOutput:
    """Samples max_new_tokens per row with a KV cache; rows stop at their first EOS.

    Args:
      model: a tipjax decoder (`models.Decoder`).
      prompt_ids, prompt_mask: [B, Tp] int, left padded (mask 1 on real tokens, every row non-empty).
      num_samples: n samples per prompt, by repeating each row n times (rows i*n .. i*n+n-1 share prompt i).
      share_prompt: with num_samples > 1, prefill each prompt once and let its n rows read one copy of its keys
        and values (models.PromptCache): n times less prefill, prompt cache memory and prompt reads per decode
        step. False: every row prefills and stores its own copy (the draws agree up to float rounding).
      pad_token_id: filler after a row's EOS (default: the first EOS id, else 0).
      buckets: prompt length buckets (default powers of two up to 32768); Tp is left padded up to its bucket
        for the compiled program and the output is sliced back to Tp + max_new_tokens columns.
      cache_dtype: the KV cache's dtype (default the compute dtype; see models.cache.CACHE_DTYPES). float8
        halves the bytes each decode step reads, at the price of attending over rounded keys and values.
      segments: decode-loop segments with growing attention windows (see `segment_ends`; default automatic).
      steps_per_loop: tokens per decode-loop iteration (default `default_steps_per_loop()`); rows stop at EOS
        all the same, the loop only checks for "every row finished" once per iteration.
    Returns: SampleOutput with [B * num_samples, Tp + max_new_tokens] arrays.

    Raises ValueError for bad settings (temperature negative or not finite, EOS / pad ids outside the
    vocabulary, ...) and, when the prompt arrays are concrete, for non-integer ids, ids outside
    [0, vocab_size) and empty or right-padded rows. Inside an outer `jax.jit` the prompt arrays are tracers:
    their dtype is still checked but their values are not (an id >= vocab_size then yields NaN logits).
    """
    if not isinstance(prompt_ids, jax.Array):
        prompt_ids = np.asarray(prompt_ids)
    _check_ids(prompt_ids, model.config.vocab_size)
    prompt_ids, prompt_mask = jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(prompt_mask, jnp.int32)
    _validate(prompt_ids, prompt_mask, max_new_tokens, temperature, top_k, top_p, num_samples)
    eos_ids, pad_id = _special_ids(eos_token_id, pad_token_id, model.config.vocab_size)
    shared = num_samples > 1 and bool(share_prompt)
    if num_samples > 1 and not shared:
        prompt_ids = jnp.repeat(prompt_ids, num_samples, axis=0)
        prompt_mask = jnp.repeat(prompt_mask, num_samples, axis=0)
    prompt_len = prompt_ids.shape[1]
    bucket = bucket_size(prompt_len, buckets)
    extra = bucket - prompt_len
    if extra:
        prompt_ids = jnp.pad(prompt_ids, ((0, 0), (extra, 0)))
        prompt_mask = jnp.pad(prompt_mask, ((0, 0), (extra, 0)))
    cache_dtype = check_cache_dtype(cache_dtype)
    steps_per_loop = default_steps_per_loop() if steps_per_loop is None else steps_per_loop
    if not isinstance(steps_per_loop, (int, np.integer)) or steps_per_loop < 1:
        raise ValueError(f"steps_per_loop must be a positive int, got {steps_per_loop!r}")
    settings = DecodeSettings(prompt_len=bucket, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                              top_k=int(top_k), top_p=float(top_p), eos_ids=eos_ids, pad_id=pad_id,
                              segments=segments, steps_per_loop=int(steps_per_loop),
                              prompt_samples=int(num_samples) if shared else 1)
    state = _jit_generate(model, prompt_ids, prompt_mask, rng, settings=settings, cache_dtype=cache_dtype)
    width = bucket + max_new_tokens  # the loop may have run a few steps more (whole iterations): dropped
    tokens, response_mask, logprobs = (x[:, :width] for x in (state.tokens, state.response_mask, state.logprobs))
    tokens = tokens.at[:, bucket:].set(jnp.where(response_mask[:, bucket:] > 0, tokens[:, bucket:], pad_id))
    lengths = jnp.sum(response_mask, axis=1)
    finished = jnp.any(response_mask.astype(bool) & _is_eos(tokens, eos_ids), axis=1)
    return SampleOutput(tokens=tokens[:, extra:], response_mask=response_mask[:, extra:],
                        logprobs=logprobs[:, extra:], lengths=lengths, truncated=~finished)
