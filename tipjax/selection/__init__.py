"""TIP token selection: chunked statistics, selection rules with static shapes, and divergence losses.

    stats = selection.token_stats(student_logits, teacher_logits, mask)   # entropy, rkl, fkl, ... [B, T]
    idx, valid = selection.select(rule, stats, mask, ratio, rng)           # [B, K], K static
    loss, metrics = selection.distill_loss(hs, head_s, ht, head_t, mask, rule=..., ratio=..., rng=...)
"""

from tipjax.selection.distill import distill_loss
from tipjax.selection.losses import DIVERGENCES, divergence, fkl, jsd, rkl
from tipjax.selection.normalise import normalised_axes
from tipjax.selection.options import SelectionOptions
from tipjax.selection.quadrants import quadrant_labels, quadrant_shares, quadrant_thresholds
from tipjax.selection.rules import RULES, Selection, keep_counts, select, select_weighted
from tipjax.selection.stats import token_stats, token_stats_from_hidden

__all__ = [
    "DIVERGENCES",
    "RULES",
    "Selection",
    "SelectionOptions",
    "distill_loss",
    "divergence",
    "fkl",
    "jsd",
    "keep_counts",
    "normalised_axes",
    "quadrant_labels",
    "quadrant_shares",
    "quadrant_thresholds",
    "rkl",
    "select",
    "select_weighted",
    "token_stats",
    "token_stats_from_hidden",
]
