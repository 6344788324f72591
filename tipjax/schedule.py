"""Schedules of the distillation knobs (selection.ratio, selection.beta) as traced values of the step count.

A schedule is a pure function of the step counter inside the compiled step, so changing values never
recompile; a constant schedule returns the Python float itself, which keeps the program (and its numbers)
exactly the one without schedules. The learning rate's schedule is optax's (tipjax.optim), with the same kinds.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

KINDS = ("constant", "linear", "cosine")


def shape(kind: str, t):
    """The fraction of the way from start to end at progress t in [0, 1]: linear t, cosine (1 - cos(pi t)) / 2."""
    if kind == "linear":
        return t
    return 0.5 * (1.0 - jnp.cos(jnp.pi * t))


def value(spec, start: float, total_steps: int, step):
    """The knob at `step` (updates attempted so far, [] int): `start` -> spec.end over spec.steps (0: total_steps)
    steps, then spec.end. A Python float for constant schedules, else a traced [] fp32."""
    if spec.kind == "constant":
        return start
    t = jnp.clip(jnp.asarray(step, jnp.float32) / max(spec.steps or total_steps, 1), 0.0, 1.0)
    return jnp.float32(start) + jnp.float32(spec.end - start) * shape(spec.kind, t)


def peak(spec, start: float) -> float:
    """The largest value the schedule takes (both kinds are monotone): what a static capacity must hold."""
    return start if spec.kind == "constant" else max(start, spec.end)


def ratio_capacity(spec, ratio: float, rule: str, t: int, options) -> int | None:
    """Static K for a scheduled retention ratio (None for a constant one: the rule's own default)."""
    from tipjax.selection import rules

    if spec.kind == "constant" or rule == "all":
        return None
    return rules.default_capacity(rule, peak(spec, ratio), t, options)


def check(spec, key: str, low: float, high: float, open_low: bool) -> str | None:
    """The complaint about a ScheduleSpec at config key `key` whose end must lie in (low|[low, high]; None if fine."""
    if spec.kind not in KINDS:
        return f"{key}.kind={spec.kind!r} must be one of {KINDS}"
    if spec.steps < 0:
        return f"{key}.steps={spec.steps!r} must be >= 0 (0: total_steps)"
    end_ok = math.isfinite(spec.end) and (low < spec.end if open_low else low <= spec.end) and spec.end <= high
    if spec.kind != "constant" and not end_ok:
        return f"{key}.end={spec.end!r} must be in {'(' if open_low else '['}{low}, {high}]"
    return None
