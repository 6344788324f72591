"""TIP token selection: chunked statistics, selection rules with static shapes, and divergence losses.

    stats = selection.token_stats(student_logits, teacher_logits, mask)   # entropy, rkl, fkl, ... [B, T]
    idx, valid = selection.select(rule, stats, mask, ratio, rng)           # [B, K], K static
    loss, metrics = selection.distill_loss(hs, head_s, ht, head_t, mask, rule=..., ratio=..., rng=...)

distill_loss is the composition of two phases a micro-batched trainer can run separately, so that the
selection sees the whole update batch (planning.py):

    p = selection.plan(rule, stats, mask, ratio, rng, options=...)         # Plan: idx, valid, scale [B, K], metrics
    loss_j = selection.planned_loss(hs_j, head_s, ht_j, head_t, p.idx[rows_j], p.scale[rows_j], ...)
"""

from tipjax.selection.distill import distill_loss, gather, planned_loss
from tipjax.selection.losses import DIVERGENCES, divergence, fkl, jsd, rkl
from tipjax.selection.normalise import normalised_axes
from tipjax.selection.options import SelectionOptions
from tipjax.selection.planning import Plan, keep_all_scale, keeps_all, plan
from tipjax.selection.quadrants import quadrant_labels, quadrant_shares, quadrant_thresholds
from tipjax.selection.rules import RULES, Selection, keep_counts, select, select_weighted
from tipjax.selection.stats import token_stats, token_stats_from_hidden

__all__ = [
    "DIVERGENCES",
    "Plan",
    "RULES",
    "Selection",
    "SelectionOptions",
    "distill_loss",
    "divergence",
    "fkl",
    "gather",
    "jsd",
    "keep_all_scale",
    "keep_counts",
    "keeps_all",
    "normalised_axes",
    "plan",
    "planned_loss",
    "quadrant_labels",
    "quadrant_shares",
    "quadrant_thresholds",
    "rkl",
    "select",
    "select_weighted",
    "token_stats",
    "token_stats_from_hidden",
]
