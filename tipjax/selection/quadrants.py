"""TIP quadrants (PAPER.md section 2, Table 1): diagnostics on the normalised entropy and divergence axes.

  Q1 high entropy, high divergence   Q2 high entropy, low divergence
  Q3 low entropy,  high divergence   Q4 low entropy,  low divergence ("solved")

"High" means strictly above the threshold. Thresholds are the batch medians of h_hat and d_hat over valid
tokens (PAPER.md section 12) or fixed values from SelectionOptions.quadrant_thresholds. Tokens with a
non-finite statistic (normalise.finite_mask) are in no quadrant.
"""

import jax.numpy as jnp

from tipjax.selection import normalise
from tipjax.selection.options import SelectionOptions


def quadrant_thresholds(h_hat, d_hat, mask, options=SelectionOptions()):
    """(entropy threshold, divergence threshold), fp32 scalars."""
    if options.quadrant_thresholds is not None:
        tau_h, tau_d = options.quadrant_thresholds
        return jnp.float32(tau_h), jnp.float32(tau_d)
    tau_h = normalise.masked_quantile(h_hat, mask, 0.5, per_row=False)[0, 0]
    tau_d = normalise.masked_quantile(d_hat, mask, 0.5, per_row=False)[0, 0]
    return tau_h, tau_d


def quadrant_labels(stats, mask, options=SelectionOptions()):
    """[B, T] int32: 1..4 for Q1..Q4 at valid tokens with finite statistics, 0 elsewhere."""
    mask = normalise.finite_mask(stats, mask)
    h_hat, d_hat = normalise.normalised_axes(
        stats, mask, scope=options.norm_scope, clip_quantile=options.clip_quantile
    )
    tau_h, tau_d = quadrant_thresholds(h_hat, d_hat, mask, options)
    high_h, high_d = h_hat > tau_h, d_hat > tau_d
    labels = jnp.where(high_h, jnp.where(high_d, 1, 2), jnp.where(high_d, 3, 4))
    return jnp.where(mask, labels, 0).astype(jnp.int32)


def quadrant_shares(stats, mask, options=SelectionOptions()):
    """{"q1": .., "q4": ..}: share of the labelled tokens in each quadrant (fp32 scalars; all 0 if none)."""
    labels = quadrant_labels(stats, mask, options)
    n = jnp.maximum(jnp.sum(labels > 0), 1).astype(jnp.float32)
    return {f"q{q}": jnp.sum(labels == q).astype(jnp.float32) / n for q in range(1, 5)}
