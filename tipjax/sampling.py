"""KV-cache rollout sampler: a state struct, a prefill, and one `lax.while_loop`.

Shapes: B rows, Tp prompt columns (left padded), N = max_new_tokens, S = Tp + N cache slots, V vocabulary.

`generate` is a pure function of arrays and static settings. Called eagerly it pads the prompt to its
length bucket and runs one compiled program per (bucket, settings); called inside an outer `jax.jit`
(the trainer's step) it simply traces into that program. Sampling semantics, applied in this order to
the model's fp32 next-token logits z:

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

import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SampleOutput", "SamplerState", "generate", "bucket_size", "DEFAULT_BUCKETS", "sample_logits"]

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
    cache: object              # models.KVCache
    rng: jax.Array


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


def _prefill(model, prompt_ids, prompt_mask, max_new_tokens, cache_dtype, rng) -> SamplerState:
    batch, prompt_len = prompt_ids.shape
    total = prompt_len + max_new_tokens
    mask = prompt_mask.astype(bool)
    # Left padding: each row's positions start at 0 at its first real token.
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    cache = model.init_cache(batch, total, dtype=cache_dtype)
    hidden, cache = model.hidden_cached(prompt_ids, positions, cache, mask, fresh=True)
    # The last column is every row's last real prompt token (left padding), so its logits predict token 1.
    next_logits = model.logits(hidden[:, -1])
    tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(prompt_ids)
    return SamplerState(
        step=jnp.zeros((), jnp.int32), tokens=tokens,
        response_mask=jnp.zeros((batch, total), jnp.int32), logprobs=jnp.zeros((batch, total), jnp.float32),
        done=jnp.zeros((batch,), bool), positions=jnp.sum(mask, axis=1).astype(jnp.int32),
        next_logits=next_logits, cache=cache, rng=rng)


def segment_ends(max_new_tokens: int, segments: int | None = None) -> tuple[int, ...]:
    """Where the decode loop's segments end. Segment j attends over prompt + ends[j] cache slots only.

    Default: one segment per 256 new tokens, at most 4 (each segment is its own compiled loop body).
    """
    if segments is None:
        segments = min(4, -(-max_new_tokens // 256))
    segments = max(1, min(segments, max_new_tokens))
    return tuple(-(-max_new_tokens * (j + 1) // segments) for j in range(segments))


def _decode_loop(model, state: SamplerState, *, prompt_len, max_new_tokens, temperature, top_k, top_p,
                 eos_ids, pad_id, segments=None) -> SamplerState:
    # Segments: a sequence of while loops whose attention window grows, so early tokens of a long rollout
    # do not read the unwritten end of the KV cache. Each stops early when every row has finished.
    for end in segment_ends(max_new_tokens, segments):
        state = _decode_segment(model, state, end=end, window=prompt_len + end, prompt_len=prompt_len,
                                temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=eos_ids, pad_id=pad_id)
    return state


def _decode_segment(model, state: SamplerState, *, end, window, prompt_len, temperature, top_k, top_p,
                    eos_ids, pad_id) -> SamplerState:
    def cond(s: SamplerState):
        return (s.step < end) & ~jnp.all(s.done)

    def body(s: SamplerState) -> SamplerState:
        rng, key = jax.random.split(s.rng)
        token = sample_logits(key, s.next_logits, temperature=temperature, top_k=top_k, top_p=top_p)
        live = ~s.done
        token = jnp.where(live, token, pad_id)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(s.next_logits, axis=-1), token[:, None], axis=-1)[:, 0]
        col = prompt_len + s.step
        tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, col))
        response_mask = jax.lax.dynamic_update_slice(s.response_mask, live.astype(jnp.int32)[:, None], (0, col))
        logprobs = jax.lax.dynamic_update_slice(s.logprobs, jnp.where(live, logprob, 0.0)[:, None], (0, col))
        done = s.done | (live & _is_eos(token, eos_ids))
        hidden, cache = model.hidden_cached(token[:, None], s.positions[:, None], s.cache, live[:, None],
                                            window=window)
        return SamplerState(
            step=s.step + 1, tokens=tokens, response_mask=response_mask, logprobs=logprobs, done=done,
            positions=s.positions + 1, next_logits=model.logits(hidden[:, 0]), cache=cache, rng=rng)

    return jax.lax.while_loop(cond, body, state)


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "cache_dtype"))
def _jit_prefill(model, prompt_ids, prompt_mask, rng, *, max_new_tokens, cache_dtype):
    return _prefill(model, prompt_ids, prompt_mask, max_new_tokens, cache_dtype, rng)


@functools.partial(jax.jit, static_argnames=("prompt_len", "max_new_tokens", "temperature", "top_k", "top_p",
                                              "eos_ids", "pad_id", "segments"), donate_argnums=(1,))
def _jit_decode(model, state, **settings):
    return _decode_loop(model, state, **settings)


def _validate(prompt_ids, prompt_mask, max_new_tokens, temperature, top_k, top_p, num_samples):
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_ids and prompt_mask must both be [B, Tp]; got {prompt_ids.shape} and "
                         f"{prompt_mask.shape}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not isinstance(prompt_mask, jax.core.Tracer):
        lengths = np.asarray(prompt_mask).sum(axis=1)
        if (lengths == 0).any():
            raise ValueError(f"prompt rows {np.flatnonzero(lengths == 0).tolist()} are empty (prompt_mask all 0)")
        last = np.asarray(prompt_mask)[:, -1]
        if not last.all():
            raise ValueError("prompts must be left padded: prompt_mask[:, -1] must be 1 for every row")


def generate(model, prompt_ids: jax.Array, prompt_mask: jax.Array, *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_id: int | Sequence[int] | None = None, rng: jax.Array,
             num_samples: int = 1, pad_token_id: int | None = None, buckets: Sequence[int] | None = None,
             cache_dtype=None, segments: int | None = None) -> SampleOutput:
    """Samples max_new_tokens per row with a KV cache; rows stop at their first EOS.

    Args:
      model: a tipjax decoder (`models.Decoder`).
      prompt_ids, prompt_mask: [B, Tp] int, left padded (mask 1 on real tokens, every row non-empty).
      num_samples: n samples per prompt, by repeating each row n times (rows i*n .. i*n+n-1 share prompt i).
      pad_token_id: filler after a row's EOS (default: the first EOS id, else 0).
      buckets: prompt length buckets (default powers of two up to 32768); Tp is left padded up to its bucket
        for the compiled program and the output is sliced back to Tp + max_new_tokens columns.
      segments: decode-loop segments with growing attention windows (see `segment_ends`; default automatic).
    Returns: SampleOutput with [B * num_samples, Tp + max_new_tokens] arrays.
    """
    prompt_ids, prompt_mask = jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(prompt_mask, jnp.int32)
    _validate(prompt_ids, prompt_mask, max_new_tokens, temperature, top_k, top_p, num_samples)
    eos_ids = tuple(int(e) for e in np.atleast_1d(eos_token_id)) if eos_token_id is not None else ()
    pad_id = int(pad_token_id) if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    if num_samples > 1:
        prompt_ids = jnp.repeat(prompt_ids, num_samples, axis=0)
        prompt_mask = jnp.repeat(prompt_mask, num_samples, axis=0)
    prompt_len = prompt_ids.shape[1]
    bucket = bucket_size(prompt_len, buckets)
    extra = bucket - prompt_len
    if extra:
        prompt_ids = jnp.pad(prompt_ids, ((0, 0), (extra, 0)))
        prompt_mask = jnp.pad(prompt_mask, ((0, 0), (extra, 0)))
    state = _jit_prefill(model, prompt_ids, prompt_mask, rng, max_new_tokens=max_new_tokens,
                         cache_dtype=cache_dtype)
    state = _jit_decode(model, state, prompt_len=bucket, max_new_tokens=max_new_tokens,
                        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                        eos_ids=eos_ids, pad_id=pad_id, segments=segments)
    tokens = state.tokens.at[:, bucket:].set(jnp.where(state.response_mask[:, bucket:] > 0,
                                                       state.tokens[:, bucket:], pad_id))
    lengths = jnp.sum(state.response_mask, axis=1)
    finished = jnp.any(state.response_mask.astype(bool) & _is_eos(tokens, eos_ids), axis=1)
    return SampleOutput(tokens=tokens[:, extra:], response_mask=state.response_mask[:, extra:],
                        logprobs=state.logprobs[:, extra:], lengths=lengths, truncated=~finished)
