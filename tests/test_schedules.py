"""Schedules of selection.ratio, selection.beta and the learning rate: values per step against numpy, one
compilation across steps whose values change, and a flat schedule (traced) equal to the constant (static) knob."""

import dataclasses
import fractions

import jax
import numpy as np
import pytest

from tipjax import config_loader, config_schema, optim, schedule, train
from tipjax.prompt_source import SyntheticPrompts


def np_value(kind, start, end, steps, step):
    t = min(step / steps, 1.0)
    frac = t if kind == "linear" else 0.5 * (1 - np.cos(np.pi * t))
    return start + (end - start) * frac


def np_lr(kind, lr, warmup, decay, end_factor, step):
    if step < warmup:
        return lr * step / warmup
    t = min((step - warmup) / (decay - warmup), 1.0)
    end = lr * end_factor
    if kind == "constant":
        return lr
    if kind == "linear":
        return lr + (end - lr) * t
    return end + (lr - end) * 0.5 * (1 + np.cos(np.pi * t))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_values_follow_numpy(kind):
    spec = config_schema.ScheduleSpec(kind=kind, end=0.1, steps=8)
    got = [float(schedule.value(spec, 0.6, 100, np.int32(i))) for i in range(12)]
    np.testing.assert_allclose(got, [np_value(kind, 0.6, 0.1, 8, i) for i in range(12)], rtol=1e-6)
    whole_run = config_schema.ScheduleSpec(kind=kind, end=0.9, steps=0)  # steps 0: over total_steps
    np.testing.assert_allclose(float(schedule.value(whole_run, 0.3, 20, np.int32(5))), np_value(kind, 0.3, 0.9, 20, 5),
                               rtol=1e-6)
    assert schedule.value(config_schema.ScheduleSpec(), 0.25, 100, np.int32(7)) == 0.25  # constant: a Python float


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_learning_rate_schedules_follow_numpy(kind):
    spec = config_schema.OptimSpec(learning_rate=2e-3, schedule=kind, warmup_steps=3, decay_steps=10, end_lr_factor=0.1)
    fn = optim.learning_rate_schedule(spec, total_steps=50)
    np.testing.assert_allclose([float(fn(i)) for i in range(14)],
                               [np_lr(kind, 2e-3, 3, 10, 0.1, i) for i in range(14)], rtol=1e-5, atol=1e-12)


def _tiny(*overrides):
    cfg = config_loader.to_dataclass(config_loader.load_config("configs/tiny.py:soft_or50", [
        "--config.rollout.max_new_tokens=16", *overrides]), config_schema.TrainConfig)
    return dataclasses.replace(cfg, mesh=config_schema.MeshSpec(1, 1, 1))


def _keep_count(ratio, m):
    """rules.keep_counts restated: floor(ratio * m), the ratio read as its nearest fraction (denominator <= 1000)."""
    frac = fractions.Fraction(float(np.float32(ratio))).limit_denominator(1000)
    return (frac.numerator * m) // frac.denominator


def test_scheduled_ratio_beta_and_lr_change_every_step_in_one_compiled_program():
    cfg = _tiny("--config.selection.divergence=jsd", "--config.selection.ratio_schedule.kind=linear",
                "--config.selection.ratio_schedule.end=0.1", "--config.selection.ratio_schedule.steps=4",
                "--config.selection.beta_schedule.kind=cosine", "--config.selection.beta_schedule.end=0.1",
                "--config.selection.beta_schedule.steps=4", "--config.optim.schedule=linear",
                "--config.optim.warmup_steps=1", "--config.optim.end_lr_factor=0.2", "--config.total_steps=5")
    train.validate(cfg)
    s = train.setup(cfg)
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    source = SyntheticPrompts(cfg.data, cfg.prompts_per_step, 256)
    for step in range(5):
        batch = next(source)
        lengths = np.asarray(s.rollout_fn(state, batch["prompt_ids"], batch["prompt_mask"]))  # this step's samples
        state, metrics = s.step_fn(state, s.teacher, batch["prompt_ids"], batch["prompt_mask"])
        ratio = np_value("linear", 0.5, 0.1, 4, step)
        np.testing.assert_allclose(float(metrics["selection_ratio"]), ratio, rtol=1e-6)
        np.testing.assert_allclose(float(metrics["selection_beta"]), np_value("cosine", 0.5, 0.1, 4, step), rtol=1e-6)
        np.testing.assert_allclose(float(metrics["learning_rate"]), np_lr("linear", 1e-2, 1, 5, 0.2, step), rtol=1e-6)
        # Eq. 8 per rollout at this step's ratio, inside a static capacity sized for the largest ratio.
        assert int(metrics["n_kept"]) == sum(_keep_count(ratio, int(m)) for m in lengths), step
    assert s.step_fn._cache_size() == 1


def test_a_flat_schedule_is_the_constant_knob():
    """A traced ratio and beta (linear from x to x) give exactly the static program's loss and update."""
    results = []
    for overrides in ([], ["--config.selection.ratio_schedule.kind=linear", "--config.selection.ratio_schedule.end=0.5",
                           "--config.selection.beta_schedule.kind=linear", "--config.selection.beta_schedule.end=0.3"]):
        cfg = _tiny("--config.selection.divergence=jsd", "--config.selection.beta=0.3", *overrides)
        s = train.setup(cfg)
        state = s.init_fn(s.student, jax.random.PRNGKey(0))
        batch = next(SyntheticPrompts(cfg.data, cfg.prompts_per_step, 256))
        state, metrics = s.step_fn(state, s.teacher, batch["prompt_ids"], batch["prompt_mask"])
        results.append((float(metrics["loss"]), float(metrics["n_kept"]), jax.tree.leaves(state.model)))
    (loss_a, kept_a, params_a), (loss_b, kept_b, params_b) = results
    assert kept_a == kept_b and loss_a > 0
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    for a, b in zip(params_a, params_b):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_bad_schedules_name_their_key():
    with pytest.raises(config_loader.ConfigError, match=r"selection.ratio_schedule.end=0.0 must be in \(0.0, 1.0\]"):
        train.validate(_tiny("--config.selection.ratio_schedule.kind=linear"))
    with pytest.raises(config_loader.ConfigError, match="selection.beta_schedule.kind='step'"):
        train.validate(_tiny("--config.selection.beta_schedule.kind=step"))
    with pytest.raises(config_loader.ConfigError, match="optim.schedule"):
        train.validate(_tiny("--config.optim.schedule=exponential"))
