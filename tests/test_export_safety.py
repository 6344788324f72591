"""`python -m tipjax.export` never writes into or over what tipjax did not create, nor into its own workdir.

The workdir is built directly with the Checkpointer (steps 1 and 2 of a tiny student, laid out as the trainer
lays it out), so these tests need no training run.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fixtures_workdir import write_tiny_workdir
from tipjax import export, models, workdir as workdir_lib

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    write_tiny_workdir(run)
    return run


def _tree(path: Path) -> dict:
    """Every file and folder under path with its bytes: what 'left untouched' compares."""
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def _export(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("TIPJAX_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tipjax.export", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _refused(result, *names) -> str:
    """Asserts a one-line refusal (exit 1, no traceback) naming every one of names; returns the error line."""
    lines = result.stderr.strip().splitlines()
    if lines[-1].startswith("hint: "):
        lines.pop()
    assert result.returncode == 1, result.stderr
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert str(name) in lines[-1]
    return lines[-1]


def test_new_and_empty_targets_get_a_marked_export_equal_to_the_checkpoint(workdir, tmp_path):
    result = _export("--workdir", workdir, "--out", tmp_path / "new" / "hf")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "new" / "hf"
    assert json.loads((out / export.MARKER).read_text()) == {"workdir": str(workdir.resolve()), "step": 2}
    exported, student = models.load_hf(str(out)), workdir_lib.load_student(workdir)
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(student), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    (tmp_path / "empty").mkdir()
    assert _export("--workdir", workdir, "--out", tmp_path / "empty", "--step", 1).returncode == 0
    assert json.loads((tmp_path / "empty" / export.MARKER).read_text())["step"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch folders left


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_tipjax_did_not_create_is_never_replaced(workdir, tmp_path, overwrite):
    mine = tmp_path / "my_model"
    (mine / "sub").mkdir(parents=True)
    (mine / "config.json").write_text('{"mine": true}')
    (mine / "sub" / "notes.txt").write_bytes(b"\x00precious")
    before = _tree(mine)
    result = _export("--workdir", workdir, "--out", mine, *(["--overwrite"] if overwrite else []))
    assert "not a tipjax export" in _refused(result, mine)
    assert _tree(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_model"]


def test_an_earlier_export_needs_overwrite(workdir, tmp_path):
    out = tmp_path / "hf"
    assert _export("--workdir", workdir, "--out", out, "--step", 1).returncode == 0
    before = _tree(out)
    result = _export("--workdir", workdir, "--out", out)
    assert "--overwrite" in result.stderr.strip().splitlines()[-1]  # the hint names the way out
    _refused(result, out)
    assert _tree(out) == before
    result = _export("--workdir", workdir, "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / export.MARKER).read_text())["step"] == 2
    assert _tree(out) != before and sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_file_target_is_refused(workdir, tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"weights")
    _refused(_export("--workdir", workdir, "--out", target), target)
    assert target.read_bytes() == b"weights"


@pytest.mark.parametrize("where", [".", "sub", "checkpoints", "checkpoints/2", ".."])
def test_never_into_or_over_its_own_workdir(workdir, where):
    before = _tree(workdir)
    target = workdir / where
    _refused(_export("--workdir", workdir, "--out", target), target.resolve())
    assert _tree(workdir) == before


def test_missing_step_lists_the_available_ones(workdir, tmp_path):
    result = _export("--workdir", workdir, "--out", tmp_path / "hf", "--step", 7)
    assert _refused(result, workdir / "checkpoints") == \
        f"error: no checkpoint for step 7; available steps: 1, 2 ({workdir / 'checkpoints'})"
    assert not (tmp_path / "hf").exists()


def test_corrupt_latest_checkpoint_exports_the_newest_good_one_and_moves_nothing(workdir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    for f in (run / "checkpoints" / "2" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:8])
    before = _tree(run)
    result = _export("--workdir", run, "--out", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    assert "skipped checkpoint step 2" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((tmp_path / "hf" / export.MARKER).read_text())["step"] == 1
    assert _tree(run) == before  # export only reads the run
