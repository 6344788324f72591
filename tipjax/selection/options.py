"""Options for the choices the TIP paper leaves open (PAPER.md section 12), with its defaults.

The dataclass is frozen and hashable so it can be a static argument under `jax.jit`.
"""

import dataclasses

NORM_SCOPES = ("batch", "rollout", "micro_batch")
UNITS = ("rollout", "batch")
AGGREGATIONS = ("token_mean", "rollout_mean")


@dataclasses.dataclass(frozen=True)
class SelectionOptions:
    """How scores are normalised, how many tokens are kept where, and how the loss is averaged.

    Attributes:
      norm_scope: "batch" clips entropy at its `clip_quantile` and min-max normalises entropy and
        divergence over all valid tokens of the arrays given (under `jax.jit` with sharded inputs that is
        the global batch across devices); "rollout" does both per row. "micro_batch" tells the trainer to
        take the statistics (clip, min-max, quadrant medians, and the ranking of unit="batch") over each
        micro-batch's rollouts: one fused student pass per micro-batch, no whole-batch statistics pass (one
        student forward fewer per step), at the price of selections that depend on how rows fall into
        micro-batches. Inside this package it behaves exactly like "batch" on the arrays given; the trainer
        decides which arrays those are.
      unit: "rollout" keeps floor(ratio * m_i) tokens per row (Eq. 8); "batch" keeps
        floor(ratio * sum_i m_i) tokens ranked over the whole batch. Rows stay a static [B, K] buffer, so with
        "batch" a row holds at most K = min(T, ceil(batch_capacity * ratio * T)) tokens; the surplus of a row
        that wins more is dropped (lowest scores first) and counted in the `n_dropped` metric.
      importance_weights: entropy_sample only. Weight each kept token by 1 / q_t, its inclusion probability
        given the Gumbel threshold (the (k+1)-th largest perturbed key; Kool et al. 2019), and divide by the
        response-token count: an unbiased estimate of the all-token mean (PAPER.md App. A.3). Default off, as
        in the reference code.
      aggregation: "token_mean" averages over every kept token of the batch; "rollout_mean" averages
        per-row means over rows that keep at least one token (Eq. 9 read per rollout).
      min_one: keep at least one token in every row that has a response token (default off: a row with
        floor(ratio * m_i) = 0 contributes nothing).
      clip_quantile: the entropy clip (0.98: "clip the top 2% of entropy values").
      batch_capacity: row capacity factor for unit="batch" (see `unit`).
      quadrant_thresholds: fixed (entropy, divergence) thresholds on the normalised [0, 1] axes for the
        Q1..Q4 diagnostics; None uses the batch medians.
    """

    norm_scope: str = "batch"
    unit: str = "rollout"
    importance_weights: bool = False
    aggregation: str = "token_mean"
    min_one: bool = False
    clip_quantile: float = 0.98
    batch_capacity: float = 2.0
    quadrant_thresholds: tuple[float, float] | None = None

    def __post_init__(self):
        for name, allowed in (("norm_scope", NORM_SCOPES), ("unit", UNITS), ("aggregation", AGGREGATIONS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"SelectionOptions.{name}={value!r}; valid: {', '.join(allowed)}")
        if not 0.0 < self.clip_quantile <= 1.0:
            raise ValueError(f"SelectionOptions.clip_quantile={self.clip_quantile} must be in (0, 1]")
        if self.batch_capacity < 1.0:
            raise ValueError(f"SelectionOptions.batch_capacity={self.batch_capacity} must be >= 1")
        if self.quadrant_thresholds is not None and len(self.quadrant_thresholds) != 2:
            raise ValueError(
                f"SelectionOptions.quadrant_thresholds={self.quadrant_thresholds!r} must be None or "
                "(entropy_threshold, divergence_threshold)"
            )
