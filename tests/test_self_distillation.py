"""Self-distillation: teacher.source "student" (the current weights, no second model) and "student_initial" (a
frozen copy of step 0), alone and with teacher-only context; the dry run's memory report."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_teacher_context import _assets, config

from tipjax import config_loader, config_schema, models, prompt_source, train
from tipjax.prompt_source import SyntheticPrompts


def _tiny_self(source, *overrides):
    cfg = config_loader.to_dataclass(config_loader.load_config("configs/tiny.py:soft_or50", list(overrides)), config_schema.TrainConfig)
    return dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, arch=None, source=source),
                               mesh=config_schema.MeshSpec(1, 1, 1))


def test_student_teacher_without_context_is_the_student_itself():
    cfg = _tiny_self("student")
    train.validate(cfg)
    s = train.setup(cfg)
    assert s.teacher is None  # no teacher weights at all
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    before = [np.asarray(x).copy() for x in jax.tree.leaves(state.model)]
    batch = next(SyntheticPrompts(cfg.data, cfg.prompts_per_step, 256))
    state, metrics = s.step_fn(state, None, batch["prompt_ids"], batch["prompt_mask"])
    # The teacher's distribution is the student's at every position: zero divergence, zero gradient, no update.
    # (The kept-token loss sums in another order than rkl_all, so it is zero only up to float32 rounding: 1.4e-9
    # under jax 0.12's XLA:CPU.)
    assert abs(float(metrics["loss"])) < 1e-7 and float(metrics["rkl_all"]) == 0.0 and float(metrics["n_kept"]) > 0
    for a, b in zip(before, jax.tree.leaves(state.model)):
        np.testing.assert_array_equal(a, np.asarray(b))
    with pytest.raises(config_loader.ConfigError, match="teacher.source='student' uses the student's weights"):
        train.validate(dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, preset="qwen3-4b")))
    with pytest.raises(config_loader.ConfigError, match="teacher.source"):
        train.validate(dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, source="self")))
    # A config file's teacher folder or preset is unset from the command line with None.
    unset = config_loader.load_config("configs/opd_qwen3_8b_to_4b.py", ["--config.teacher.preset=None"])
    assert unset.teacher.preset is None and unset.student.preset == "Qwen3-4B"


@functools.lru_cache(maxsize=None)
def _context_run(root, source, steps):
    """Steps of a run with teacher-only context; (setup, initial params, batch arrays, [(state copy, metrics)])."""
    assets = _assets(root)
    # No warmup: step 1 updates the student, so at step 2 "student" and "student_initial" teachers differ.
    cfg = config(assets, "--config.selection.rule=soft_or", "--config.selection.ratio=0.5",
                 "--config.optim.warmup_steps=0", source=source)
    train.validate(cfg)
    s = train.setup(cfg)
    batch = next(prompt_source.make_prompt_source(cfg.data, cfg.prompts_per_step, tokenizer=s.tokenizer,
                                                  vocab_size=s.student.config.vocab_size))
    arrays = [batch[k] for k in prompt_source.STEP_KEYS if k in batch]
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    initial = [np.asarray(x).copy() for x in jax.tree.leaves(state.model)]
    out = []
    for _ in range(steps):
        state, metrics = s.step_fn(state, s.teacher, *arrays)
        out.append((jax.tree.map(jnp.copy, state), jax.device_get(metrics)))
    return cfg, s, initial, arrays, out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("self_distillation"))


def test_student_teacher_with_context_equals_an_explicit_teacher_holding_the_current_weights(root):
    cfg, _, initial, arrays, [(state1, m1), (_, m2)] = _context_run(root, "student", 2)
    assert float(m1["loss"]) > 0  # the teacher-only context changes the teacher's distribution
    assert not np.array_equal(initial[0], np.asarray(jax.tree.leaves(state1.model)[0]))  # "current" has moved
    # The same step with a separate teacher model whose weights are the student's after step 1.
    ref_cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, source="model", path=cfg.student.path))
    s_ref = train.setup(ref_cfg)
    teacher = jax.tree.map(jnp.copy, state1.model)
    ref_state, ref_metrics = s_ref.step_fn(jax.tree.map(jnp.copy, state1), teacher, *arrays)
    _, _, _, _, [_, (state2, _)] = _context_run(root, "student", 2)
    np.testing.assert_allclose(float(m2["loss"]), float(ref_metrics["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_state.model), jax.tree.leaves(state2.model)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_student_initial_teacher_stays_the_step_zero_student(root):
    _, s, initial, _, runs = _context_run(root, "student_initial", 3)
    _, _, _, _, current = _context_run(root, "student", 2)
    for a, b in zip(initial, jax.tree.leaves(s.teacher)):  # the frozen copy after three updates of the student
        np.testing.assert_array_equal(a, np.asarray(b))
    assert not np.array_equal(initial[0], np.asarray(jax.tree.leaves(runs[-1][0].model)[0]))
    # Step 1: both teachers are the initial student; step 2: only "student" follows the update.
    np.testing.assert_allclose(float(runs[0][1]["loss"]), float(current[0][1]["loss"]), rtol=1e-6)
    assert abs(float(runs[1][1]["loss"]) - float(current[1][1]["loss"])) > 1e-6


def test_dry_run_reports_the_memory_a_separate_teacher_would_take(capsys):
    report = train.dry_run(_tiny_self("student"))
    s = train.setup(_tiny_self("student"))
    expected = models.param_count(s.student) * 4 / 2.0**30  # fp32 teacher.param_dtype, one device
    assert report["teacher_params"] == 0
    assert report["self_distillation"]["teacher.source"] == "student"
    np.testing.assert_allclose(report["self_distillation"]["saved_gib_per_device"], expected, rtol=1e-9)
