"""TIP token-selection rules (PAPER.md section 3) with static shapes: scores -> idx [B, K], valid [B, K].

Every rule ranks the valid tokens of a row by a score, keeps floor(ratio * m_i) of the row's m_i tokens
(Eq. 8) and breaks ties towards the earlier position. The buffer width K is static (Python int, the
`capacity`); the per-row counts are computed from `ratio` inside the program, so `ratio` may be a traced
scalar and changing it (or the mask) does not recompile as long as K stays the same.

Slots are in rank order (best first); slots past a row's count are padding with valid = False.
"""

import fractions
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from tipjax.selection import normalise
from tipjax.selection.options import SelectionOptions

RULES = ("all", "random", "entropy_sample", "entropy_topk", "soft_or", "soft_or_bottom", "q3", "div")
# Ratios are read as the nearest fraction with at most this denominator, so floor(ratio * m) is exact integer
# arithmetic for every ratio with up to three decimals (fp32 alone gets floor(0.7 * 10) = 6).
MAX_DENOMINATOR = 1000
# Entropy floor for sampling weights, as the reference code's clamp(ent, 1e-8): every token keeps a chance.
MIN_SAMPLING_ENTROPY = 1e-8


class Selection(NamedTuple):
    """idx [B, K] int32 positions; valid [B, K] bool; weight [B, K] fp32 (1 or 1/q_t where valid, else 0);
    n_dropped [] int32, tokens the rule chose but the K-wide buffer could not hold."""

    idx: jax.Array
    valid: jax.Array
    weight: jax.Array
    n_dropped: jax.Array


def check_rule(rule):
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is unknown; valid: {', '.join(RULES)}")


def concrete_ratio(ratio):
    """ratio as a Python float, or None when it is traced."""
    try:
        return float(ratio)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def check_ratio(ratio):
    """Validate a concrete ratio in (0, 1]; a traced one is taken as is."""
    value = concrete_ratio(ratio)
    if value is not None and not 0.0 < value <= 1.0:
        raise ValueError(f"ratio={value} must be in (0, 1]")


def ratio_fraction(ratio):
    """(numerator, denominator) of the ratio as used by `keep_counts` (host side, concrete ratio)."""
    frac = fractions.Fraction(float(ratio)).limit_denominator(MAX_DENOMINATOR)
    return frac.numerator, frac.denominator


def keep_counts(ratio, m, *, min_one=False):
    """floor(ratio * m) as int32, exact for ratios that are fractions with denominator <= 1000.

    ratio: scalar (traced or not); m: int array of token counts. Returns an int32 array shaped like m.
    """
    den = jnp.arange(1, MAX_DENOMINATOR + 1, dtype=jnp.float32)
    r = jnp.asarray(ratio, jnp.float32)
    num = jnp.round(r * den)
    best = jnp.argmin(jnp.abs(num / den - r))
    m = m.astype(jnp.int32)
    # The clip only matters for a traced ratio outside (0, 1], which cannot be validated on the host.
    k = jnp.clip((num[best].astype(jnp.int32) * m) // den[best].astype(jnp.int32), 0, m)
    if min_one:
        k = jnp.where(m > 0, jnp.maximum(k, 1), 0)
    return k


def default_capacity(rule, ratio, t, options):
    """Static K: T for "all", ceil(ratio * T) per rollout, min(T, ceil(batch_capacity * ratio * T)) per batch."""
    if rule == "all":
        return t
    num, den = ratio_fraction(ratio)
    factor = options.batch_capacity if options.unit == "batch" else 1.0
    return max(1, min(t, math.ceil(factor * num * t / den)))


def scores(rule, stats, mask, rng, options):
    """Per-token ranking score [B, T] fp32 (higher is kept first) and, for entropy_sample, the log sampling weights."""
    if rule == "all":
        return jnp.zeros(mask.shape, jnp.float32), None
    if rule == "random":
        return jax.random.uniform(rng, mask.shape), None
    if rule == "entropy_sample":
        log_w = jnp.log(jnp.maximum(stats["entropy"], MIN_SAMPLING_ENTROPY))
        # Gumbel-top-k on log weights = successive sampling without replacement with p_t proportional to h_t.
        return log_w + jax.random.gumbel(rng, mask.shape), log_w
    if rule == "div":
        return stats["rkl"], None
    h_hat, d_hat = normalise.normalised_axes(
        stats, mask, scope=options.norm_scope, clip_quantile=options.clip_quantile
    )
    if rule == "entropy_topk":
        return h_hat, None
    # Eq. 7 as 1 - (1 - h)(1 - d): a saturated axis gives exactly 1, so those ties are real ties.
    soft_or = 1.0 - (1.0 - h_hat) * (1.0 - d_hat)
    if rule == "soft_or":
        return soft_or, None
    if rule == "soft_or_bottom":
        return -soft_or, None
    return stats["fkl"] * (1.0 - h_hat), None


def rank_key(score, mask):
    """Valid tokens get finite keys (NaN lowest), invalid ones -inf, so a top-k never prefers padding."""
    big = jnp.finfo(jnp.float32).max
    finite = jnp.nan_to_num(score.astype(jnp.float32), nan=-big, posinf=big, neginf=-big)
    return jnp.where(mask.astype(bool), finite, -jnp.inf)


def inclusion_weight(log_w, threshold):
    """1 / q_t with q_t = P(log_w_t + Gumbel > threshold) = 1 - exp(-exp(log_w_t - threshold)) (Kool et al. 2019)."""
    q = -jnp.expm1(-jnp.exp(log_w - threshold))
    return 1.0 / jnp.maximum(q, jnp.finfo(jnp.float32).tiny)


def select_weighted(rule, stats, mask, ratio, rng, *, capacity=None, options=SelectionOptions()):
    """Select tokens and their loss weights.

    Args:
      rule: one of RULES. "all" keeps every valid token and ignores ratio.
      stats: dict of [B, T] statistics (see stats.py); rules read entropy, rkl and fkl.
      mask: [B, T] response mask (nonzero = a token that may be selected). Except for "all", tokens with a
        non-finite entropy, rkl or fkl are treated as masked.
      ratio: retention ratio in (0, 1], Python float or traced scalar.
      rng: PRNG key (used by random and entropy_sample).
      capacity: static K; required when ratio is traced. Default `default_capacity`.
      options: SelectionOptions.

    Returns:
      Selection(idx [B, K], valid [B, K], weight [B, K], n_dropped []).
    """
    check_rule(rule)
    check_ratio(ratio)
    b, t = mask.shape
    if capacity is None:
        if concrete_ratio(ratio) is None:
            raise ValueError("capacity (a static K) is required when ratio is traced")
        capacity = default_capacity(rule, ratio, t, options)
    if not isinstance(capacity, int) or not 1 <= capacity <= t:
        raise ValueError(f"capacity={capacity!r} must be an int in [1, T={t}]")

    # A token with a non-finite statistic cannot be ranked: it is dropped as if masked (m_i counts it out).
    valid_mask = mask.astype(bool) if rule == "all" else normalise.finite_mask(stats, mask)
    score, log_w = scores(rule, stats, valid_mask, rng, options)
    key = rank_key(score, valid_mask)
    m = jnp.sum(valid_mask, axis=-1)
    if rule == "all":
        counts = m
    elif options.unit == "batch":
        return _select_batch(key, log_w, valid_mask, ratio, capacity, options)
    else:
        counts = keep_counts(ratio, m, min_one=options.min_one)

    # One extra column gives the (k+1)-th key, the sampling threshold for importance weights.
    top_keys, top_idx = lax.top_k(key, min(capacity + 1, t))
    kept = jnp.minimum(counts, capacity)
    slots = jnp.arange(capacity)
    valid = slots[None, :] < kept[:, None]
    idx = top_idx[:, :capacity].astype(jnp.int32)
    weight = valid.astype(jnp.float32)
    if log_w is not None and options.importance_weights:
        padded = jnp.pad(top_keys, ((0, 0), (0, 1)), constant_values=-jnp.inf)
        threshold = jnp.take_along_axis(padded, kept[:, None], axis=-1)
        weight = jnp.where(valid, inclusion_weight(jnp.take_along_axis(log_w, idx, axis=-1), threshold), 0.0)
    return Selection(idx, valid, weight, jnp.sum(counts - kept).astype(jnp.int32))


def _select_batch(key, log_w, valid_mask, ratio, capacity, options):
    """Global top-k over all B*T tokens (stable: earlier row, then earlier position), then packed per row."""
    b, t = valid_mask.shape
    flat = key.reshape(-1)
    order = jnp.arange(b * t, dtype=jnp.int32)
    neg_sorted, perm = lax.sort((-flat, order), num_keys=1, is_stable=True)
    rank = jnp.zeros_like(order).at[perm].set(order)
    total = keep_counts(ratio, jnp.sum(valid_mask), min_one=False)
    chosen = (rank < total).reshape(b, t)
    if options.min_one:
        best = jnp.argmax(key, axis=-1)
        has_any = jnp.any(valid_mask, axis=-1)
        chosen = chosen | (jax.nn.one_hot(best, t, dtype=bool) & has_any[:, None])
    _, top_idx = lax.top_k(jnp.where(chosen, key, -jnp.inf), capacity)
    n_chosen = jnp.sum(chosen, axis=-1)
    kept = jnp.minimum(n_chosen, capacity)
    valid = jnp.arange(capacity)[None, :] < kept[:, None]
    idx = top_idx.astype(jnp.int32)
    weight = valid.astype(jnp.float32)
    if log_w is not None and options.importance_weights:
        padded = jnp.pad(-neg_sorted, (0, 1), constant_values=-jnp.inf)
        weight = jnp.where(valid, inclusion_weight(jnp.take_along_axis(log_w, idx, axis=-1), padded[total]), 0.0)
    return Selection(idx, valid, weight, jnp.sum(n_chosen - kept).astype(jnp.int32))


def select(rule, stats, mask, ratio, rng, *, capacity=None, options=SelectionOptions()):
    """TIP selection: -> (idx [B, K] int32, valid [B, K] bool). See `select_weighted` for the arguments."""
    chosen = select_weighted(rule, stats, mask, ratio, rng, capacity=capacity, options=options)
    return chosen.idx, chosen.valid
