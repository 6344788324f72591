"""A run killed with SIGKILL mid-way and restarted ends bitwise equal to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tipjax import workdir as workdir_lib

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/tiny.py:soft_or50", "--config.total_steps=40", "--config.checkpoint.every=4",
        "--config.checkpoint.async_save=True"]


def _command(workdir):
    return [sys.executable, "-m", "tipjax.train", *ARGS, f"--workdir={workdir}"]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_equal(tmp_path):
    subprocess.run(_command(tmp_path / "straight"), cwd=ROOT, env=_env(), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(killed), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "4").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert finished and finished[-1] < 40, f"the run was not interrupted (checkpoints {finished})"
    subprocess.run(_command(killed), cwd=ROOT, env=_env(), check=True, capture_output=True)

    a, b = workdir_lib.load_student(tmp_path / "straight"), workdir_lib.load_student(killed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 40 and len(steps) > 40 - finished[-1]  # the restart re-did only the lost steps


def test_resume_in_process_restores_the_prompt_iterator(tmp_path):
    """Stop after 2 of 4 steps and resume: the same prompts, hence the same weights and rows, as a straight run."""
    import dataclasses

    from tipjax import config_loader, config_schema, train
    from tipjax.metrics_log import read_metrics

    cfg = config_loader.to_dataclass(config_loader.load_config("configs/tiny.py:soft_or50", [
        "--config.total_steps=4", "--config.checkpoint.every=2", "--config.checkpoint.async_save=False"]),
        config_schema.TrainConfig)
    cfg = dataclasses.replace(cfg, mesh=config_schema.MeshSpec(1, 1, 1))
    train.train(cfg, tmp_path / "straight")
    train.train(cfg, tmp_path / "resumed", max_steps=2)
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == [1, 2]
    train.train(cfg, tmp_path / "resumed")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    a, b = workdir_lib.load_student(tmp_path / "straight"), workdir_lib.load_student(tmp_path / "resumed")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
