"""`python -m tipjax.export --workdir DIR [--step N] --out HF_DIR [--dtype bfloat16]`

Writes a training run's student (from its orbax checkpoint) as a Hugging Face folder through
`models.save_hf`: config.json, sharded safetensors, and the student's tokenizer and generation files, so
`transformers.AutoModelForCausalLM.from_pretrained(HF_DIR)` loads it with the same logits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from tipjax import models
from tipjax.checkpoint import Checkpointer
from tipjax.train_config import CheckpointSpec


def is_workdir(path: str | Path) -> bool:
    return (Path(path) / "student_config.json").is_file() and (Path(path) / "checkpoints").is_dir()


def load_student(workdir: str | Path, step: int | None = None, dtype=None) -> models.Decoder:
    """The student of a training run at `step` (default: the latest checkpoint), on one device."""
    workdir = Path(workdir)
    if not is_workdir(workdir):
        raise FileNotFoundError(f"{workdir} is not a tipjax workdir (no student_config.json and checkpoints/)")
    run = json.loads((workdir / "run.json").read_text()) if (workdir / "run.json").is_file() else {}
    hf_config = json.loads((workdir / "student_config.json").read_text())
    cfg = models.ModelConfig.from_hf_dict(hf_config, param_dtype=hf_config.get("torch_dtype", "float32"),
                                          source_dir=run.get("student_path"))
    checkpoints = Checkpointer(workdir / "checkpoints", CheckpointSpec(async_save=False))
    if step is not None and step not in checkpoints.all_steps():
        raise FileNotFoundError(f"no checkpoint for step {step} in {workdir}; have {checkpoints.all_steps()}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), models.abstract(cfg))
    params = checkpoints.restore_params(step, target)
    checkpoints.close()
    if dtype is not None:
        params = jax.tree.map(lambda x: x.astype(dtype), params)
    return params


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tipjax.export", description=__doc__.split("\n")[2])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", required=True, help="the Hugging Face folder to write")
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float32", "float16"),
                        help="tensor dtype in the export (default: the training parameter dtype)")
    parser.add_argument("--max_shard_size", default="5GB")
    args = parser.parse_args(argv)
    student = load_student(args.workdir, args.step)
    out = models.save_hf(student, args.out, dtype=args.dtype and jnp.dtype(args.dtype),
                         max_shard_size=args.max_shard_size)
    print(f"wrote {out} ({models.param_count(student):,} parameters)")


if __name__ == "__main__":
    main()
