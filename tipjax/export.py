"""`python -m tipjax.export --workdir DIR [--step N] --out HF_DIR [--dtype bfloat16] [--overwrite]`

Writes a training run's student (from its orbax checkpoint) as a Hugging Face folder through
`models.save_hf`: config.json, sharded safetensors, and the student's tokenizer and generation files, so
`transformers.AutoModelForCausalLM.from_pretrained(HF_DIR)` loads it with the same logits.

The export never destroys what tipjax did not create: HF_DIR must be new, empty, or an earlier tipjax export
(marked by tipjax_export.json) and then only with --overwrite; it may neither be the run's workdir nor lie
inside it nor contain it. All of this is checked before any weights load. The folder is assembled beside
HF_DIR and renamed into place, so a failure leaves HF_DIR as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jax.numpy as jnp

from tipjax import cli, models, workdir as workdir_lib

MARKER = "tipjax_export.json"


class ExportError(cli.UserError):
    """The export target or source is unusable; nothing was written."""


def check_target(out: str | Path, workdir: str | Path, *, overwrite: bool) -> Path:
    """The resolved export folder, or an ExportError when writing there could destroy something."""
    out, workdir = Path(out).resolve(), Path(workdir).resolve()
    if out == workdir:
        raise ExportError("--out is the run's workdir", out, hint="export to a folder outside the workdir")
    if workdir in out.parents:
        raise ExportError("--out lies inside the run's workdir", out, hint="export to a folder outside the workdir")
    if out in workdir.parents:
        raise ExportError("--out contains the run's workdir, which the export would replace", out)
    if not out.exists():
        return out
    if not out.is_dir():
        raise ExportError("--out exists and is not a folder", out)
    if not any(out.iterdir()):
        return out
    if not (out / MARKER).is_file():
        raise ExportError("--out is not empty and is not a tipjax export; refusing to replace it", out,
                          hint="choose a new or empty folder")
    if not overwrite:
        raise ExportError("--out already holds a tipjax export", out, hint="pass --overwrite to replace it")
    return out


def export(workdir: str | Path, out: str | Path, *, step: int | None = None, overwrite: bool = False,
           dtype: str | None = None, max_shard_size: str | int = "5GB") -> tuple[Path, int]:
    """Writes the run's student to `out`; returns (out, the checkpoint step exported)."""
    workdir = Path(workdir)
    workdir_lib.check(workdir, ExportError)
    out = check_target(out, workdir, overwrite=overwrite)
    step, student = workdir_lib.restore_student(workdir, step)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.tipjax-export-", dir=out.parent))
    try:
        new = models.save_hf(student, scratch / "new", dtype=dtype and jnp.dtype(dtype), max_shard_size=max_shard_size)
        (new / MARKER).write_text(json.dumps({"workdir": str(workdir.resolve()), "step": step}, indent=1) + "\n")
        check_target(out, workdir, overwrite=overwrite)  # again: the target may have changed while we wrote
        _swap_in(new, out, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # our own scratch folder (and a replaced old export)
    return out, step


def _swap_in(new: Path, out: Path, scratch: Path) -> None:
    """Renames new onto out; an earlier export at out is moved into scratch first and restored on failure."""
    if out.is_dir() and any(out.iterdir()):
        old = scratch / "old"
        os.replace(out, old)
        try:
            os.replace(new, out)
        except BaseException:
            os.replace(old, out)
            raise
    else:
        os.replace(new, out)  # a missing or empty folder: rename replaces an empty directory


def main(argv=None) -> None:
    parser = cli.ArgumentParser(prog="python -m tipjax.export", description=__doc__.split("\n")[2])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest readable)")
    parser.add_argument("--out", required=True, help="the Hugging Face folder to write (new, empty or an export)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier tipjax export at --out")
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float32", "float16"),
                        help="tensor dtype in the export (default: the training parameter dtype)")
    parser.add_argument("--max_shard_size", default="5GB")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out, step = export(args.workdir, args.out, step=args.step, overwrite=args.overwrite, dtype=args.dtype,
                       max_shard_size=args.max_shard_size)
    print(f"wrote {out} (checkpoint step {step} of {args.workdir})")


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
