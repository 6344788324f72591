"""The TIP distillation loss: chunked statistics -> selection -> divergence at the kept positions only.

Memory is the point (DESIGN.md section 1): the gradient path touches only the gathered [B, K, D] hidden
states and one [C, V] chunk of logits at a time (gradient fused into the forward scan, or rematerialised).
"""

import jax
import jax.numpy as jnp

from tipjax.selection import chunks, fused, losses, quadrants, rules, stats
from tipjax.selection.options import SelectionOptions

BACKWARDS = ("fused", "remat")


def distill_loss(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    response_mask,
    *,
    rule,
    ratio,
    rng,
    divergence="rkl",
    chunk_size=512,
    options=SelectionOptions(),
    beta=0.5,
    tokens=None,
    capacity=None,
    backward="fused",
):
    """Divergence between student and teacher over the full vocabulary, averaged over the selected tokens (Eq. 9).

    Args:
      student_hidden: [B, T, Ds] final hidden states (differentiated).
      student_head: [Ds, V] student lm_head (differentiated).
      teacher_hidden: [B, T, Dt]; teacher_head: [Dt, V] (both stop-gradient).
      response_mask: [B, T], nonzero at response positions.
      rule: one of rules.RULES; ratio: retention in (0, 1] (Python float, or traced with a static `capacity`).
      rng: PRNG key for the sampling rules.
      divergence: "rkl" (paper default) | "fkl" | "jsd" (with beta) -- the training loss, not the ranking signal.
      chunk_size: positions projected to the vocabulary per step.
      options: SelectionOptions (normalisation scope, unit, importance weights, aggregation, ...).
      tokens: optional [B, T] sampled tokens, adding the teacher_token_prob metric.
      capacity: static K (see rules.select_weighted).
      backward: "fused" computes each chunk's gradient in the forward scan (fused.py, no recomputation);
        "remat" differentiates a `jax.checkpoint`ed chunk, recomputing its logits in the backward pass.
        Same values and gradients, same memory order; fused does one projection pass fewer.

    Returns:
      (loss [] fp32, metrics: dict of [] fp32). A mask without response tokens gives loss 0 (value and
      gradient) and metrics["empty"] = 1.
    """
    rules.check_rule(rule)
    losses.check_divergence(divergence)
    rules.check_ratio(ratio)
    stats.check_hidden(student_hidden, student_head, teacher_hidden, teacher_head, response_mask)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
    if backward not in BACKWARDS:
        raise ValueError(f"backward={backward!r} is unknown; valid: {', '.join(BACKWARDS)}")
    b, t = response_mask.shape
    mask = response_mask.astype(bool)
    teacher_hidden, teacher_head = jax.lax.stop_gradient((teacher_hidden, teacher_head))
    loss_fn = {"divergence": divergence, "beta": beta, "chunk_size": chunk_size, "backward": backward}

    # Every token is kept: no statistics pass and no gather; the loss pass reports the statistics.
    if rule == "all" or (rules.concrete_ratio(ratio) == 1.0 and capacity in (None, t)):
        weight = mask.astype(jnp.float32)
        scale = loss_weights(weight, mask, weight, options)
        loss, per_pos = weighted_divergence(
            student_hidden, student_head, teacher_hidden, teacher_head, scale, tokens=tokens, with_stats=True, **loss_fn
        )
        token_stats = stats.apply_mask(per_pos, mask)
        kept_stats, kept = token_stats, mask
        n_dropped = jnp.float32(0)
    else:
        token_stats = stats.token_stats_from_hidden(
            student_hidden, student_head, teacher_hidden, teacher_head, mask,
            chunk_size=chunk_size, tokens=tokens, beta=None,
        )
        chosen = rules.select_weighted(rule, token_stats, mask, ratio, rng, capacity=capacity, options=options)
        scale = loss_weights(chosen.weight, chosen.valid, mask.astype(jnp.float32), options)
        loss, _ = weighted_divergence(
            gather(student_hidden, chosen.idx), student_head, gather(teacher_hidden, chosen.idx), teacher_head,
            scale, tokens=None, with_stats=False, **loss_fn,
        )
        kept_stats = {k: jnp.take_along_axis(v, chosen.idx, axis=1) for k, v in token_stats.items()}
        kept = chosen.valid
        n_dropped = chosen.n_dropped.astype(jnp.float32)
    return loss, selection_metrics(token_stats, mask, kept_stats, kept, n_dropped, options)


def gather(hidden, idx):
    """hidden [B, T, D] at idx [B, K] -> [B, K, D]."""
    return jnp.take_along_axis(hidden, idx[..., None], axis=1)


def loss_weights(weight, kept, response, options):
    """Per-token loss weights [B, P] summing to the chosen average (Eq. 9 aggregation).

    weight [B, P]: 1 (or 1/q_t) at kept tokens, 0 elsewhere; kept [B, P] bool; response [B, T] the response mask
    as float. With importance weights the denominator is the response count (an estimate of the all-token
    mean, App. A.3); otherwise the kept count.
    """
    per_row = jnp.sum(response if options.importance_weights else kept.astype(jnp.float32), axis=-1)
    if options.aggregation == "token_mean":
        return weight / jnp.maximum(jnp.sum(per_row), 1.0)
    rows = jnp.sum(jnp.any(kept, axis=-1)).astype(jnp.float32)
    return weight / (jnp.maximum(per_row, 1.0)[:, None] * jnp.maximum(rows, 1.0))


def weighted_divergence(
    student_hidden, student_head, teacher_hidden, teacher_head, scale, *,
    divergence, beta, chunk_size, tokens, backward, with_stats,
):
    """sum over positions of scale * divergence, and (if with_stats) the stop-gradient statistics of every position.

    student_hidden [B, P, Ds], teacher_hidden [B, P, Dt], heads [D, V], scale [B, P] fp32, tokens None or [B, P].
    Returns (loss [] fp32, dict of [B, P] fp32 statistics without jsd; empty unless with_stats).
    """
    b, p = scale.shape
    if backward == "fused":
        flat_tokens = None if tokens is None else tokens.reshape(b * p).astype(jnp.int32)
        loss, flat = fused.fused_divergence(
            student_hidden.reshape(b * p, -1), student_head, teacher_hidden.reshape(b * p, -1), teacher_head,
            scale.reshape(b * p), flat_tokens, divergence, beta, chunk_size, with_stats,
        )
        return loss, {k: v.reshape(b, p) for k, v in flat.items()}
    per_pos = chunked_divergence(
        student_hidden, student_head, teacher_hidden, teacher_head,
        divergence=divergence, beta=beta, chunk_size=chunk_size, tokens=tokens, with_stats=with_stats,
    )
    # where, not multiply: a masked position must not turn 0 * inf into NaN.
    loss = jnp.sum(jnp.where(scale > 0, per_pos.pop("div"), 0.0) * scale)
    return loss, per_pos


def chunked_divergence(
    student_hidden, student_head, teacher_hidden, teacher_head, *, divergence, beta, chunk_size, tokens, with_stats
):
    """Per-position divergence of the given positions, `chunk_size` at a time, logits recomputed in backward.

    student_hidden [B, P, Ds], teacher_hidden [B, P, Dt], heads [D, V], tokens None or [B, P].
    Returns a dict of [B, P] fp32: "div" (differentiable) and, if with_stats, the stop-gradient statistics of
    stats.position_stats (without jsd).
    """
    b, p = student_hidden.shape[:2]
    # The head gradient is summed over chunks inside the scan; an fp32 copy makes that sum fp32 even for bf16 heads.
    head_s = student_head.astype(jnp.float32)
    arrays = (student_hidden.reshape(b * p, -1), teacher_hidden.reshape(b * p, -1))
    if tokens is not None:
        arrays += (tokens.reshape(b * p).astype(jnp.int32),)

    def chunk_loss(chunk):
        logits_s = chunks.project(chunk[0], head_s.astype(student_head.dtype))
        logits_t = chunks.project(chunk[1], teacher_head)
        out = {}
        if with_stats:
            out = stats.position_stats(
                jax.lax.stop_gradient(logits_s), logits_t, tokens=chunk[2] if tokens is not None else None, beta=None
            )
        out["div"] = losses.divergence(divergence, logits_s, logits_t, beta=beta)
        return out

    flat = chunks.map_chunks(chunk_loss, arrays, chunk_size, remat=True)
    return {k: v.reshape(b, p) for k, v in flat.items()}


def selection_metrics(token_stats, mask, kept_stats, kept, n_dropped, options):
    """Scalar fp32 metrics: counts, kept fraction, mean statistics over kept and all response tokens, Q1..Q4."""
    n_response = jnp.sum(mask).astype(jnp.float32)
    n_kept = jnp.sum(kept).astype(jnp.float32)
    metrics = {
        "empty": (n_response == 0).astype(jnp.float32),
        "n_response": n_response,
        "n_kept": n_kept,
        "n_dropped": n_dropped,
        "kept_fraction": n_kept / jnp.maximum(n_response, 1.0),
    }
    for name in token_stats:
        metrics[f"{name}_all"] = jnp.sum(jnp.where(mask, token_stats[name], 0.0)) / jnp.maximum(n_response, 1.0)
        metrics[f"{name}_kept"] = jnp.sum(jnp.where(kept, kept_stats[name], 0.0)) / jnp.maximum(n_kept, 1.0)
    metrics.update(quadrants.quadrant_shares(token_stats, mask, options))
    return metrics
