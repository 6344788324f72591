"""Selection as a plan: whole-batch statistics -> kept positions and their loss scales, before any gradient.

A plan is what `distill_loss` decides between its statistics pass and its loss pass. Made separately, it lets
a trainer with micro-batches take every batch-scope statistic (entropy clip, min-max, quadrant medians, the
global ranking of unit="batch", the loss normaliser) over the whole update batch (PAPER.md section 12):

    stats = concat over micro-batches of token_stats_from_hidden(...)        # no gradient, [B, T]
    p = plan(rule, stats, mask, ratio, rng, options=options)                # once, on the whole batch
    loss = sum over micro-batches j of planned_loss(..., p.idx[rows_j], p.scale[rows_j], ...)

`scale` already holds the whole batch's normaliser, so the micro-batch losses add up to the batch loss.
"""

import flax.struct
import jax
import jax.numpy as jnp

from tipjax.selection import normalise, quadrants, rules, stats
from tipjax.selection.options import SelectionOptions


@flax.struct.dataclass
class Plan:
    """The positions to train on and their loss weights, for the whole batch.

    idx: [B, K] int32 positions (rank order; arange(T) when keeps_all).
    valid: [B, K] bool, the slots that hold a kept token.
    scale: [B, K] fp32 loss weight, 0 where not valid; the loss is sum(scale * divergence at idx).
    metrics: dict of [] fp32 whole-batch metrics (see `plan_metrics`).
    keeps_all: static; True when every response token is kept (K = T, idx = arange), so a loss pass may
      skip the identity gather (`planned_loss(..., idx=None, ...)` on the full hidden states).
    """

    idx: jax.Array
    valid: jax.Array
    scale: jax.Array
    metrics: dict
    keeps_all: bool = flax.struct.field(pytree_node=False, default=False)


def keeps_all(rule, ratio, capacity, t):
    """Static: whether the selection keeps every response token (rule "all", or ratio 1 at full capacity)."""
    return rule == "all" or (rules.concrete_ratio(ratio) == 1.0 and capacity in (None, t))


def plan(rule, token_stats, response_mask, ratio, rng, *, options=SelectionOptions(), capacity=None):
    """Select the tokens to train on and scale their losses by the whole batch's normaliser.

    Args:
      rule: one of rules.RULES (static).
      token_stats: dict of [B, T] statistics (stats.token_stats*, beta=None for distill_loss's metrics);
        rules read entropy, rkl and fkl. Every key becomes an `<key>_all` / `<key>_kept` metric.
      response_mask: [B, T], nonzero at response positions.
      ratio: retention in (0, 1], Python float (or traced with a static `capacity`).
      rng: PRNG key (random, entropy_sample).
      options: SelectionOptions (static).
      capacity: static K (rules.select_weighted); default rules.default_capacity.

    Returns:
      Plan with idx, valid, scale [B, K] and the metrics. With keeps_all, K = T and valid = the mask; a
      non-finite token is then kept too (the loss turns non-finite and the trainer skips the step);
      otherwise tokens with non-finite statistics are never selected and are counted in n_nonfinite.
    """
    rules.check_rule(rule)
    rules.check_ratio(ratio)
    stats.check_positions(response_mask, **token_stats)
    b, t = response_mask.shape
    mask = response_mask.astype(bool)
    usable = normalise.finite_mask(token_stats, mask)
    if keeps_all(rule, ratio, capacity, t):
        idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        valid, scale = mask, keep_all_scale(mask, options)
        n_dropped = jnp.int32(0)
    else:
        chosen = rules.select_weighted(rule, token_stats, usable, ratio, rng, capacity=capacity, options=options)
        idx, valid, n_dropped = chosen.idx, chosen.valid, chosen.n_dropped
        scale = loss_weights(chosen.weight, valid, usable.astype(jnp.float32), options)
    metrics = plan_metrics(token_stats, mask, usable, idx, valid, n_dropped, options)
    return Plan(idx, valid, scale, metrics, keeps_all=keeps_all(rule, ratio, capacity, t))


def keep_all_scale(mask, options):
    """[B, T] loss weights of the plan that keeps every response token (mask [B, T], any dtype).

    Known before any statistic: with `keeps_all`, a trainer can run `planned_loss(..., None, scale,
    return_stats=True)` per micro-batch and call `plan` on the merged statistics only for the metrics.
    """
    mask = mask.astype(bool)
    weight = mask.astype(jnp.float32)
    return loss_weights(weight, mask, weight, options)


def loss_weights(weight, kept, response, options):
    """Per-token loss weights [B, P] summing to the chosen average (Eq. 9 aggregation).

    weight [B, P]: 1 (or 1/q_t) at kept tokens, 0 elsewhere; kept [B, P] bool; response [B, T] the selectable
    response tokens as float. With importance weights the denominator is the response count (an estimate of
    the all-token mean, App. A.3); otherwise the kept count.
    """
    per_row = jnp.sum(response if options.importance_weights else kept.astype(jnp.float32), axis=-1)
    if options.aggregation == "token_mean":
        return weight / jnp.maximum(jnp.sum(per_row), 1.0)
    rows = jnp.sum(jnp.any(kept, axis=-1)).astype(jnp.float32)
    return weight / (jnp.maximum(per_row, 1.0)[:, None] * jnp.maximum(rows, 1.0))


def plan_metrics(token_stats, mask, usable, idx, valid, n_dropped, options):
    """Scalar fp32 metrics of a whole batch's selection.

    empty, n_response, n_kept, n_dropped (chosen but over the buffer), n_nonfinite (response tokens with a
    non-finite statistic), kept_fraction, `<stat>_all` / `<stat>_kept` means over the finite response / kept
    tokens, q1..q4 shares. mask, usable [B, T] bool; idx, valid [B, K].
    """
    n_response = jnp.sum(mask).astype(jnp.float32)
    n_usable = jnp.sum(usable).astype(jnp.float32)
    n_kept = jnp.sum(valid).astype(jnp.float32)
    kept_finite = valid & jnp.take_along_axis(usable, idx, axis=1)
    n_kept_finite = jnp.sum(kept_finite).astype(jnp.float32)
    metrics = {
        "empty": (n_response == 0).astype(jnp.float32),
        "n_response": n_response,
        "n_kept": n_kept,
        "n_dropped": jnp.asarray(n_dropped, jnp.float32),
        "n_nonfinite": n_response - n_usable,
        "kept_fraction": n_kept / jnp.maximum(n_response, 1.0),
    }
    for name, value in token_stats.items():
        kept_value = jnp.take_along_axis(value, idx, axis=1)
        # where, not multiply: a non-finite statistic must not reach the sums.
        metrics[f"{name}_all"] = jnp.sum(jnp.where(usable, value, 0.0)) / jnp.maximum(n_usable, 1.0)
        metrics[f"{name}_kept"] = jnp.sum(jnp.where(kept_finite, kept_value, 0.0)) / jnp.maximum(n_kept_finite, 1.0)
    metrics.update(quadrants.quadrant_shares(token_stats, mask, options))
    return metrics
