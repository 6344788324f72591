"""Two processes on this machine (jax.distributed on localhost, gloo CPU collectives, 4 fake devices each) train
the tiny config as one 8-device run: the same prompts, samples and weights as a single-process 8-device run, and
the checkpoint they write together resumes in a single process.

Not bitwise: the cross-process all-reduce (gloo) sums in another order than the in-process one, so weights
differ in the last float32 bits (measured max |diff| ~1e-6); the sampled tokens, kept counts and losses agree.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tipjax import config_loader, config_schema, train, workdir as workdir_lib
from tipjax.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["--config.total_steps=4", "--config.prompts_per_step=8", "--config.checkpoint.async_save=False",
             "--config.timing_every=0"]
DRIVER = """
import sys
process, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from tipjax import cli, train
# The real entry point: --multihost with explicit coordinates (as on a GPU cluster without SLURM).
code = cli.run_main(train.main, ["--config=configs/tiny.py:soft_or50", *OVERRIDES, f"--workdir={workdir}",
                                 "--max_steps=3", "--multihost", f"--coordinator_address=localhost:{port}",
                                 "--num_processes=2", f"--process_id={process}"])
assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
sys.exit(code)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _config():
    return config_loader.to_dataclass(config_loader.load_config(str(ROOT / "configs" / "tiny.py:soft_or50"), OVERRIDES),
                             config_schema.TrainConfig)


@pytest.mark.slow
def test_two_processes_equal_one_and_their_checkpoint_resumes_in_one(tmp_path):
    multi = tmp_path / "multi"
    driver = tmp_path / "driver.py"
    driver.write_text(f"OVERRIDES = {OVERRIDES!r}\n{DRIVER}")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(driver), str(i), port, str(multi)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=420)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert sorted(p.name for p in (multi / "checkpoints").iterdir()) == ["3"]

    assert jax.device_count() == 8 and jax.process_count() == 1  # tests/conftest.py: one process, 8 CPU devices
    cfg = _config()
    train.train(cfg, tmp_path / "single")  # steps 1-4 in one process
    single_rows = read_metrics(tmp_path / "single")
    multi_rows = read_metrics(multi)
    assert [r["step"] for r in multi_rows] == [1, 2, 3]
    for a, b in zip(multi_rows, single_rows[:3]):
        assert a["n_kept"] == b["n_kept"] and a["response_tokens"] == b["response_tokens"]  # the same samples
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)

    resumed = tmp_path / "resumed"
    shutil.copytree(multi, resumed)
    train.train(cfg, resumed)  # step 4 in one process, from the 2-process checkpoint of step 3
    assert [r["step"] for r in read_metrics(resumed)] == [1, 2, 3, 4]
    assert json.loads((resumed / "run.json").read_text())["identity"] == train.run_identity(cfg)
    for x, y in zip(jax.tree.leaves(workdir_lib.load_student(tmp_path / "single")),
                    jax.tree.leaves(workdir_lib.load_student(resumed)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
