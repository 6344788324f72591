"""A run's workdir: the files tipjax writes there, and reading its student back (eval, export, tests).

    WORKDIR/student_config.json   the student's HF config.json (shapes to rebuild it)
    WORKDIR/run.json              the run's identity (checked on resume) and the student's source folder
    WORKDIR/checkpoints/          orbax checkpoints (tipjax.checkpoint)
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from tipjax import cli, models
from tipjax.checkpoint import Checkpointer
from tipjax.config_schema import CheckpointSpec

STUDENT_CONFIG = "student_config.json"
RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"


class NotAWorkdir(cli.UserError):
    """The folder holds no tipjax run."""


def is_workdir(path: str | Path) -> bool:
    return (Path(path) / STUDENT_CONFIG).is_file() and (Path(path) / CHECKPOINTS).is_dir()


def check(path: str | Path, error: type[cli.UserError] = NotAWorkdir) -> None:
    if not is_workdir(path):
        raise error(f"not a tipjax workdir (no {STUDENT_CONFIG} and {CHECKPOINTS}/)", path)


def load_student(workdir: str | Path, step: int | None = None, dtype=None,
                 decode_attention: str = "auto") -> models.Decoder:
    """The student of a training run at `step` (default: the newest readable checkpoint), on one device;
    decode_attention is ModelConfig's."""
    return restore_student(workdir, step, dtype, decode_attention)[1]


def restore_student(workdir: str | Path, step: int | None = None, dtype=None,
                    decode_attention: str = "auto") -> tuple[int, models.Decoder]:
    """(the step restored, the student); see load_student."""
    workdir = Path(workdir)
    check(workdir)
    run = json.loads((workdir / RUN_FILE).read_text()) if (workdir / RUN_FILE).is_file() else {}
    hf_config = json.loads((workdir / STUDENT_CONFIG).read_text())
    cfg = models.ModelConfig.from_hf_dict(hf_config, param_dtype=hf_config.get("torch_dtype", "float32"),
                                          source_dir=run.get("student_path"), decode_attention=decode_attention)
    checkpoints = Checkpointer(workdir / CHECKPOINTS, CheckpointSpec(async_save=False))
    try:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), models.abstract(cfg))
        step, student = checkpoints.restore_model(step, target)
    finally:
        checkpoints.close()
    if dtype is not None:
        student = jax.tree.map(lambda x: x.astype(dtype), student)
    return step, student
