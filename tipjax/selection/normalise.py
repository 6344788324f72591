"""Batch normalisation of the TIP axes (PAPER.md Sec. 6, 7.3 step 2): clipped, min-max normalised entropy and divergence.

Statistics are taken over the valid tokens of the whole [B, T] arrays given ("batch", "micro_batch") or of
each row ("rollout"). Valid means mask != 0 and finite statistics (`finite_mask`): one NaN logit must not turn
every bound into NaN. Under `jax.jit` with inputs sharded over devices, "batch" is therefore the global
batch: XLA gathers what the sort and the reductions need.
"""

import jax.numpy as jnp


# The statistics the rules read; a token with any of them non-finite cannot be ranked.
RANKED_STATS = ("entropy", "rkl", "fkl")


def finite_mask(stats, mask):
    """[B, T] bool: mask != 0 and every statistic of RANKED_STATS present in `stats` finite."""
    ok = mask.astype(bool)
    for name in RANKED_STATS:
        if name in stats:
            ok = ok & jnp.isfinite(stats[name])
    return ok


def masked_quantile(x, mask, q, *, per_row):
    """np.quantile(x[mask], q) with linear interpolation; 0 where nothing is valid.

    x, mask: [B, T]. Returns [B, 1] if per_row else [1, 1] (broadcastable against x).
    """
    if not per_row:
        x, mask = x.reshape(1, -1), mask.reshape(1, -1)
    valid = mask.astype(bool)
    m = jnp.sum(valid, axis=-1, keepdims=True)
    ordered = jnp.sort(jnp.where(valid, x, jnp.inf), axis=-1)
    pos = q * jnp.maximum(m - 1, 0).astype(jnp.float32)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, jnp.maximum(m - 1, 0))
    v_lo = jnp.take_along_axis(ordered, lo, axis=-1)
    v_hi = jnp.take_along_axis(ordered, hi, axis=-1)
    return jnp.where(m > 0, v_lo + (pos - lo) * (v_hi - v_lo), 0.0)


def min_max(x, mask, *, per_row):
    """(x - min) / (max - min) over valid tokens, in [0, 1]; a degenerate range maps to 0, as do invalid tokens. [B, T]."""
    valid = mask.astype(bool)
    axis = -1 if per_row else None
    lo = jnp.min(jnp.where(valid, x, jnp.inf), axis=axis, keepdims=True)
    hi = jnp.max(jnp.where(valid, x, -jnp.inf), axis=axis, keepdims=True)
    spread = hi - lo
    ok = valid & (spread > 0)
    return jnp.where(ok, (x - lo) / jnp.where(ok, spread, 1.0), 0.0)


def normalised_axes(stats, mask, *, scope="batch", clip_quantile=0.98):
    """The two TIP axes in [0, 1]: (h_hat, d_hat), each [B, T].

    h_hat: entropy clipped at its `clip_quantile` over valid tokens, then min-max normalised.
    d_hat: reverse KL min-max normalised (not clipped, as in the paper).
    Tokens with a non-finite statistic are left out of every bound and get 0.
    """
    per_row = scope == "rollout"
    mask = finite_mask(stats, mask)
    h = stats["entropy"]
    h = jnp.minimum(h, masked_quantile(h, mask, clip_quantile, per_row=per_row))
    return min_max(h, mask, per_row=per_row), min_max(stats["rkl"], mask, per_row=per_row)
