"""Batch-scope selection whatever the micro-batching: rules x units x micro_batches give the one-batch step."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from tipjax import config_loader, config_schema, train
from tipjax.prompt_source import SyntheticPrompts

SHORT = ("--config.rollout.temperature=0.0", "--config.rollout.max_new_tokens=16")


def _config(variant, unit, micro_batches):
    cfg = config_loader.to_dataclass(config_loader.load_config(f"configs/tiny.py:{variant}", [
        *SHORT, f"--config.selection.options={{'unit': '{unit}'}}"]), config_schema.TrainConfig)
    return dataclasses.replace(cfg, mesh=config_schema.MeshSpec(1, 1, 1), micro_batches=micro_batches)


@functools.lru_cache(maxsize=None)
def _step(variant, unit, micro_batches):
    cfg = _config(variant, unit, micro_batches)
    s = train.setup(cfg)
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    batch = next(SyntheticPrompts(cfg.data, cfg.prompts_per_step, 256))
    new_state, metrics = s.step_fn(state, s.teacher, batch["prompt_ids"], batch["prompt_mask"])
    return jax.device_get(metrics), [np.asarray(x) for x in jax.tree.leaves(new_state.model)]


@pytest.mark.parametrize("variant, unit, micro_batches", [
    ("soft_or50", "batch", 2), ("q3_10", "rollout", 8), ("entropy20", "batch", 8), ("div50", "rollout", 2),
    ("soft_or_bottom50", "rollout", 4), ("random50", "batch", 4),
])
def test_micro_batched_step_equals_the_one_batch_step(variant, unit, micro_batches):
    ref_metrics, ref_params = _step(variant, unit, 1)
    metrics, params = _step(variant, unit, micro_batches)
    # The same kept set: counts and the statistics of the kept tokens agree, and so do loss and update.
    for key in ("n_kept", "n_dropped", "kept_fraction", "entropy_kept", "rkl_kept", "fkl_kept", "q1", "q3", "loss"):
        np.testing.assert_allclose(float(metrics[key]), float(ref_metrics[key]), rtol=1e-5, atol=1e-7, err_msg=key)
    for a, b in zip(ref_params, params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
