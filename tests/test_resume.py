"""A run killed with SIGKILL mid-way and restarted ends bitwise equal to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from tipjax import export

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/tiny.py:soft_or50", "--config.total_steps=40", "--config.checkpoint.every=4",
        "--config.checkpoint.async_save=True"]


def _command(workdir):
    return [sys.executable, "-m", "tipjax.train", *ARGS, f"--workdir={workdir}"]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


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

    a, b = export.load_student(tmp_path / "straight"), export.load_student(killed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 40 and len(steps) > 40 - finished[-1]  # the restart re-did only the lost steps
