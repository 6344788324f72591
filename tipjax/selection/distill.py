"""The TIP distillation loss: chunked statistics -> selection (planning.plan) -> divergence at the kept positions only.

Memory is the point (DESIGN.md section 1): the gradient path touches only the gathered [B, K, D] hidden
states and one [C, V] chunk of logits at a time (gradient fused into the forward scan, or rematerialised).
"""

import jax
import jax.numpy as jnp

from tipjax.selection import chunks, fused, losses, planning, rules, stats
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
    return_token_stats=False,
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
      (loss [] fp32, metrics: dict of [] fp32, planning.plan_metrics). A mask without response tokens gives
      loss 0 (value and gradient) and metrics["empty"] = 1. Tokens with non-finite statistics are never
      selected (metrics["n_nonfinite"]) unless every token is kept (rule "all", ratio 1).
      Equal to planning.plan on the statistics followed by `planned_loss`. With return_token_stats, a third
      item: the per-position statistics the selection saw (dict of [B, T] fp32, 0 off the mask).
    """
    rules.check_rule(rule)
    rules.check_ratio(ratio)
    stats.check_hidden(student_hidden, student_head, teacher_hidden, teacher_head, response_mask)
    check_loss_args(divergence, chunk_size, backward)
    t = response_mask.shape[1]
    mask = response_mask.astype(bool)
    teacher_hidden, teacher_head = jax.lax.stop_gradient((teacher_hidden, teacher_head))
    loss_fn = {"divergence": divergence, "beta": beta, "chunk_size": chunk_size, "backward": backward}

    # Every token is kept: no statistics pass and no gather; the loss pass reports the statistics.
    if planning.keeps_all(rule, ratio, capacity, t):
        scale = planning.keep_all_scale(mask, options)
        loss, token_stats = planned_loss(
            student_hidden, student_head, teacher_hidden, teacher_head, None, scale,
            tokens=tokens, return_stats=True, **loss_fn,
        )
        metrics = planning.plan(rule, token_stats, mask, ratio, rng, options=options, capacity=capacity).metrics
        return (loss, metrics, token_stats) if return_token_stats else (loss, metrics)
    token_stats = stats.token_stats_from_hidden(
        student_hidden, student_head, teacher_hidden, teacher_head, mask,
        chunk_size=chunk_size, tokens=tokens, beta=None,
    )
    chosen = planning.plan(rule, token_stats, mask, ratio, rng, options=options, capacity=capacity)
    loss = planned_loss(student_hidden, student_head, teacher_hidden, teacher_head, chosen.idx, chosen.scale, **loss_fn)
    return (loss, chosen.metrics, token_stats) if return_token_stats else (loss, chosen.metrics)


def planned_loss(
    student_hidden, student_head, teacher_hidden, teacher_head, idx, scale, *,
    divergence="rkl", beta=0.5, chunk_size=512, backward="fused", tokens=None, return_stats=False,
):
    """The loss of a plan (planning.plan) on some of its rows: sum of scale * divergence at the planned positions.

    Args:
      student_hidden: [b, T, Ds] (differentiated); teacher_hidden: [b, T, Dt] (stop-gradient).
      student_head: [Ds, V] (differentiated); teacher_head: [Dt, V] (stop-gradient).
      idx: [b, K] int positions, any b rows of a plan's idx (a micro-batch); None when both hidden arrays
        are already at the planned positions ([b, K, D], e.g. a keeps_all plan or a cached gather).
      scale: [b, K] fp32, the same rows of the plan's scale (0 = not kept).
      divergence, beta, chunk_size, backward: as in `distill_loss`.
      tokens: optional [b, T] (gathered with idx; [b, K] when idx is None), adding teacher_token_prob.
      return_stats: also return the statistics of the planned positions from the same pass, so a plan that
        keeps every token needs no statistics pass (stats for `planning.plan`'s metrics afterwards).

    Returns:
      loss [] fp32, or (loss, dict of [b, K] fp32 stop-gradient statistics without jsd, 0 where scale is 0)
      with return_stats. Summed over micro-batches that partition the plan's rows, the loss equals
      distill_loss's (value and gradients). Positions with scale 0 touch neither value nor gradient, even if
      non-finite.
    """
    check_loss_args(divergence, chunk_size, backward)
    teacher_hidden, teacher_head = jax.lax.stop_gradient((teacher_hidden, teacher_head))
    if idx is not None:
        student_hidden, teacher_hidden = gather(student_hidden, idx), gather(teacher_hidden, idx)
        tokens = None if tokens is None else jnp.take_along_axis(tokens, idx, axis=1)
    stats.check_hidden(student_hidden, student_head, teacher_hidden, teacher_head, scale)
    loss, per_pos = weighted_divergence(
        student_hidden, student_head, teacher_hidden, teacher_head, scale.astype(jnp.float32),
        divergence=divergence, beta=beta, chunk_size=chunk_size, tokens=tokens, backward=backward,
        with_stats=return_stats,
    )
    if not return_stats:
        return loss
    return loss, stats.apply_mask(jax.lax.stop_gradient(per_pos), scale > 0)


def check_loss_args(divergence, chunk_size, backward):
    losses.check_divergence(divergence)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
    if backward not in BACKWARDS:
        raise ValueError(f"backward={backward!r} is unknown; valid: {', '.join(BACKWARDS)}")


def gather(hidden, idx):
    """hidden [B, T, D] at idx [B, K] -> [B, K, D]."""
    return jnp.take_along_axis(hidden, idx[..., None], axis=1)


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
        student_hidden, student_head, teacher_hidden, teacher_head, scale,
        divergence=divergence, beta=beta, chunk_size=chunk_size, tokens=tokens, with_stats=with_stats,
    )
    # where, not multiply: a masked position must not turn 0 * inf into NaN.
    loss = jnp.sum(jnp.where(scale > 0, per_pos.pop("div"), 0.0) * scale)
    return loss, per_pos


def chunked_divergence(
    student_hidden, student_head, teacher_hidden, teacher_head, scale, *,
    divergence, beta, chunk_size, tokens, with_stats,
):
    """Per-position divergence of the given positions, `chunk_size` at a time, logits recomputed in backward.

    student_hidden [B, P, Ds], teacher_hidden [B, P, Dt], heads [D, V], scale [B, P] (positions with scale 0
    are computed from zero hidden states: their values are meaningless but finite), tokens None or [B, P].
    Returns a dict of [B, P] fp32: "div" (differentiable) and, if with_stats, the stop-gradient statistics of
    stats.position_stats (without jsd).
    """
    b, p = student_hidden.shape[:2]
    # The head gradient is summed over chunks inside the scan; an fp32 copy makes that sum fp32 even for bf16 heads
    # (chunks.project multiplies in the hidden states' dtype either way).
    head_s = student_head.astype(jnp.float32)
    flat_tokens = None if tokens is None else tokens.reshape(b * p).astype(jnp.int32)
    arrays = (student_hidden.reshape(b * p, -1), teacher_hidden.reshape(b * p, -1), scale.reshape(b * p), flat_tokens)

    def chunk_loss(chunk):
        hs, ht = chunks.zero_unweighted(chunk[0], chunk[1], chunk[2])
        logits_s = chunks.project(hs, head_s)
        logits_t = chunks.project(ht, teacher_head)
        out = {}
        if with_stats:
            out = stats.position_stats(jax.lax.stop_gradient(logits_s), logits_t, tokens=chunk[3], beta=None)
        out["div"] = losses.divergence(divergence, logits_s, logits_t, beta=beta)
        return out

    flat = chunks.map_chunks(chunk_loss, arrays, chunk_size, remat=True)
    return {k: v.reshape(b, p) for k, v in flat.items()}
