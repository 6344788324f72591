"""Corrupt, partial and stray checkpoint folders: the newest step that reads cleanly is used, bitwise."""

import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tipjax.checkpoint import UNREADABLE, Checkpointer, CheckpointError
from tipjax.config_loader import ConfigError
from tipjax.config_schema import CheckpointSpec

STEPS = (10, 20, 30)


def _state(step):
    """A small train-state-like pytree whose every leaf depends on the step."""
    key = jax.random.PRNGKey(step)
    return {"params": {"w": jax.random.normal(key, (8, 4)), "b": jnp.arange(6, dtype=jnp.bfloat16) * step},
            "opt": {"mu": jax.random.uniform(key, (8, 4))}, "step": jnp.int32(step), "rng": key}


def _prompts(step):
    return {"position": step * 3, "epoch": step // 20, "order_seed": 7}


def _abstract():
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), _state(0))


def _assert_bitwise(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def run(request, tmp_path):
    """checkpoints/ holding steps 10, 20, 30, saved the way the trainer saves them."""
    spec = CheckpointSpec(keep=5, async_save=request.param)
    checkpoints = Checkpointer(tmp_path / "checkpoints", spec)
    for step in STEPS:
        checkpoints.save(step, _state(step), _prompts(step))
    checkpoints.close()
    return tmp_path / "checkpoints", spec


def _truncate_arrays(step_dir):
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # OCDBT data files: the array bytes
            f.write_bytes(f.read_bytes()[:8])


def _delete_arrays(step_dir):
    for f in list((step_dir / "state").rglob("*")):
        if f.is_file() and f.parent.name == "d":
            f.unlink()


def _garbage_metadata(step_dir):
    (step_dir / "state" / "_METADATA").write_text("{\x00 not json")


def _garbage_prompt_state(step_dir):
    (step_dir / "prompts" / "metadata").write_bytes(b"\xff\xfe{")


CORRUPTIONS = [_truncate_arrays, _delete_arrays, _garbage_metadata, _garbage_prompt_state]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_latest_falls_back_to_previous_step_bitwise(run, corrupt, caplog):
    directory, spec = run
    corrupt(directory / "30")
    checkpoints = Checkpointer(directory, spec)
    with caplog.at_level(logging.WARNING, logger="tipjax.checkpoint"):
        step, state, prompt_state = checkpoints.restore(None, _abstract())
    assert step == 20
    _assert_bitwise(state, _state(20))
    assert prompt_state == _prompts(20)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 1 and "step 30" in skipped[0] and "\n" not in skipped[0]
    # The bad folder is kept for inspection under a name orbax ignores ...
    assert (directory / f"30{UNREADABLE}").is_dir() and not (directory / "30").exists()
    assert checkpoints.all_steps() == [10, 20]
    # ... so the resumed run's own step 30 is saved instead of skipped as "not newer than the latest".
    assert checkpoints.save(30, _state(31), _prompts(31))
    checkpoints.close()
    again = Checkpointer(directory, spec)
    step, state, prompt_state = again.restore(None, _abstract())
    assert step == 30 and prompt_state == _prompts(31)
    _assert_bitwise(state, _state(31))
    again.close()


def test_empty_and_half_written_step_folders_are_ignored(run):
    directory, spec = run
    (directory / "40").mkdir()  # empty
    (directory / "50").mkdir()
    shutil.copytree(directory / "30" / "state", directory / "50" / "state")  # no prompts item
    checkpoints = Checkpointer(directory, spec)
    assert checkpoints.all_steps() == [10, 20, 30] and checkpoints.latest_step() == 30
    step, params = checkpoints.restore_model(None, _abstract()["params"])
    assert step == 30
    _assert_bitwise(params, _state(30)["params"])
    assert (directory / "40").is_dir() and (directory / "50").is_dir()  # restore_model only reads
    step, state, prompt_state = checkpoints.restore(None, _abstract())
    assert step == 30 and prompt_state == _prompts(30)
    _assert_bitwise(state, _state(30))
    checkpoints.close()


def test_restore_model_falls_back_and_moves_nothing(run, caplog):
    directory, spec = run
    _truncate_arrays(directory / "30")
    checkpoints = Checkpointer(directory, spec)
    with caplog.at_level(logging.WARNING, logger="tipjax.checkpoint"):
        step, params = checkpoints.restore_model(None, _abstract()["params"])
    assert step == 20
    _assert_bitwise(params, _state(20)["params"])
    assert any("skipped checkpoint step 30" in r.getMessage() for r in caplog.records)
    assert (directory / "30").is_dir() and not (directory / f"30{UNREADABLE}").exists()
    checkpoints.close()


def test_explicit_step_is_exact_or_a_one_line_error(run):
    directory, spec = run
    _garbage_metadata(directory / "30")
    checkpoints = Checkpointer(directory, spec)
    with pytest.raises(CheckpointError) as missing:
        checkpoints.restore(25, _abstract())
    assert str(missing.value) == f"no checkpoint for step 25; available steps: 10, 20, 30 ({directory})"
    with pytest.raises(CheckpointError) as corrupt:
        checkpoints.restore(30, _abstract())
    assert "checkpoint step 30 is unreadable" in str(corrupt.value) and "\n" not in str(corrupt.value)
    assert corrupt.value.where == directory / "30"
    with pytest.raises(CheckpointError, match="no checkpoint for step 25"):
        checkpoints.restore_model(25, _abstract()["params"])
    assert checkpoints.all_steps() == [10, 20, 30]  # a failed request moves nothing
    checkpoints.close()


def test_rewinding_to_an_explicit_step_sets_later_steps_aside(run):
    directory, spec = run
    checkpoints = Checkpointer(directory, spec)
    step, state, prompt_state = checkpoints.restore(10, _abstract())
    assert step == 10 and prompt_state == _prompts(10)
    _assert_bitwise(state, _state(10))
    assert checkpoints.all_steps() == [10]
    assert sorted(p.name for p in directory.iterdir()) == ["10", "20.superseded", "30.superseded"]
    assert checkpoints.save(20, _state(21), _prompts(21))  # the rewound run checkpoints again
    checkpoints.close()
    step, params = Checkpointer(directory, spec).restore_model(None, _abstract()["params"])
    assert step == 20
    _assert_bitwise(params, _state(21)["params"])


def test_no_readable_checkpoint_is_an_error_naming_the_skipped_steps(run):
    directory, spec = run
    for step in STEPS:
        _delete_arrays(directory / str(step))
    checkpoints = Checkpointer(directory, spec)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint \(skipped steps 10, 20, 30\)"):
        checkpoints.restore_model(None, _abstract()["params"])
    checkpoints.close()


def test_stray_empty_folder_does_not_swallow_new_saves(tmp_path):
    (tmp_path / "checkpoints" / "40").mkdir(parents=True)
    checkpoints = Checkpointer(tmp_path / "checkpoints", CheckpointSpec(keep=3, async_save=False))
    assert checkpoints.latest_step() is None
    assert checkpoints.save(10, _state(10), _prompts(10))
    assert checkpoints.save(20, _state(20), _prompts(20))
    assert checkpoints.all_steps() == [10, 20]
    assert (tmp_path / "checkpoints" / f"40{UNREADABLE}").is_dir()
    checkpoints.close()


def test_keep_must_be_at_least_one(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint.keep must be >= 1"):
        Checkpointer(tmp_path / "checkpoints", CheckpointSpec(keep=0))
    checkpoints = Checkpointer(tmp_path / "checkpoints", CheckpointSpec(keep=1, async_save=False))
    for step in STEPS:
        checkpoints.save(step, _state(step), _prompts(step))
    checkpoints.close()
    checkpoints = Checkpointer(tmp_path / "checkpoints", CheckpointSpec(keep=1))
    assert checkpoints.all_steps() == [30]
    checkpoints.close()


def test_a_train_state_is_stored_under_the_names_earlier_versions_wrote(tmp_path):
    """TrainState.model is saved as "params" (its old field name): a run saved before the rename resumes, and
    one saved now restores into TrainState and into restore_model alike."""
    from tipjax.optim import TrainState

    old = _state(10)  # the dict an earlier tipjax wrote: the model under "params"
    old_layout = dict(step=old["step"], params=old["params"], opt_state=old["opt"], rng=old["rng"],
                      skipped=jnp.int32(1), skipped_run=jnp.int32(0))
    checkpoints = Checkpointer(tmp_path / "checkpoints", CheckpointSpec(keep=5, async_save=False))
    checkpoints.save(10, old_layout, _prompts(10))
    new = TrainState(step=jnp.int32(20), model=_state(20)["params"], opt_state=_state(20)["opt"],
                     rng=_state(20)["rng"], skipped=jnp.int32(2), skipped_run=jnp.int32(1))
    checkpoints.save(20, new, _prompts(20))
    checkpoints.wait()

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), new)
    # restore_model only reads; restore(10) rewinds the run (step 20 set aside as superseded), so it comes last.
    for step, want_model in ((10, old["params"]), (20, new.model)):
        _assert_bitwise(checkpoints.restore_model(step, abstract.model)[1], want_model)
    for step, want_model, want_skipped in ((None, new.model, 2), (10, old["params"], 1)):
        got_step, state, _ = checkpoints.restore(step, abstract)
        assert got_step == (step or 20) and isinstance(state, TrainState) and int(state.skipped) == want_skipped
        _assert_bitwise(state.model, want_model)
    checkpoints.close()
