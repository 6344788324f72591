"""Part 2 of bench_train.py: AOT per-device memory of the paper's Qwen3-8B -> Qwen3-4B step on 8 fake CPU devices.

Each variant compiles in its own subprocess (this file run as a script), because the fake device count must be
set before JAX starts and each compile holds many GiB of host memory. The child prints one `BENCH_JSON {...}` line:
what `python -m tipjax.train --dry_run` reports, plus a per-device breakdown of the inputs and the largest
temporaries from XLA's buffer-assignment dump.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEMORY_CONFIG = ROOT / "configs" / "opd_qwen3_8b_to_4b.py"

MEMORY_VARIANTS = {"all": ("all", 1.0), "soft_or50": ("soft_or", 0.5), "entropy50": ("entropy_sample", 0.5),
                   "q3_10": ("q3", 0.1)}
MEMORY_RUNS = [("all", []), ("soft_or50", []), ("entropy50", []), ("q3_10", []),
               ("all", ["--config.rollout.groups=8"]), ("soft_or50", ["--config.rollout.groups=8"]),
               ("all", ["--config.rollout.share_prompt=False"])]


# --- the child: one AOT compile ---------------------------------------------------------------------------

def memory_config(variant: str, overrides: list[str]):
    from tipjax import config_loader
    from tipjax.config_schema import TrainConfig

    return config_loader.to_dataclass(config_loader.load_config(f"{MEMORY_CONFIG}:{variant}", overrides), TrainConfig)


def dry_run_child(variant: str, overrides: list[str]) -> None:
    """Fakes 8 devices before JAX starts, then does what `python -m tipjax.train --dry_run` does (validate +
    train.dry_run), plus a per-device breakdown of the step's inputs; prints one JSON line."""
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np

    from tipjax import models, step, train

    cfg = memory_config(variant, overrides)
    train.validate(cfg, dry_run=True)  # as the CLI with --dry_run: no prompt file needed
    report = train.dry_run(cfg)
    s = train.setup(cfg, abstract=True)
    state = jax.eval_shape(s.init_fn, s.student, jax.ShapeDtypeStruct((2,), jax.numpy.uint32))

    def per_device(tree, shardings):
        return sum(int(np.prod(sh.shard_shape(x.shape))) * x.dtype.itemsize
                   for x, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))) / 2**30

    sh = s.state_shardings
    param_sh = models.model_shardings(s.student, s.mesh, models.STORAGE_RULES)
    report["inputs_gib"] = {
        "student_params": per_device(state.model, sh.model),
        "optimizer_state": per_device(state.opt_state, sh.opt_state),
        "optimizer_state_if_sharded_like_params": 2 * per_device(state.model, param_sh),
        "teacher_params": per_device(s.teacher, jax.tree.map(lambda x: x.sharding, s.teacher))}
    rows = cfg.prompts_per_step * cfg.rollout.samples_per_prompt
    report["settings"] = {
        "prompts": cfg.prompts_per_step, "samples": cfg.rollout.samples_per_prompt,
        "prompt_len": cfg.data.max_prompt_length, "new_tokens": cfg.rollout.max_new_tokens,
        "mesh": dict(s.mesh.shape), "micro_batches": cfg.micro_batches,
        "rollout_groups": cfg.rollout.groups, "chunk_size": cfg.selection.chunk_size,
        "student_dtype": f"{cfg.student.param_dtype} params / {cfg.student.compute_dtype} compute",
        "teacher_dtype": f"{cfg.teacher.param_dtype} params / {cfg.teacher.compute_dtype} compute",
        "remat": cfg.student.remat, "rows": rows}
    c = s.student.config
    shards = s.mesh.shape["data"] * s.mesh.shape["fsdp"]
    kv_bytes = jax.numpy.dtype(c.compute_dtype).itemsize
    # Slots per rollout group: each row's response, and its prompt once per row or, shared, once per prompt.
    groups = cfg.rollout.groups
    prompt_copies = cfg.prompts_per_step if step.shares_prompts(cfg.rollout) else rows / groups
    slots = rows / groups * cfg.rollout.max_new_tokens + prompt_copies * cfg.data.max_prompt_length
    report["kv_cache_gib_per_device"] = (
        2 * c.num_layers * c.num_kv_heads * c.head_dim * slots / shards * kv_bytes
        / min(s.mesh.shape["tensor"], c.num_kv_heads) / 2**30)
    report["largest_temporaries"] = largest_temporaries(os.environ.get("BENCH_XLA_DUMP"))
    print("BENCH_JSON " + json.dumps(report))


def largest_temporaries(dump_dir, top=8):
    """The largest distinct values in the step's preallocated temp buffer, from XLA's buffer-assignment dump."""
    if not dump_dir:
        return None
    files = sorted(Path(dump_dir).glob("*jit_step.cpu_after_optimizations-buffer-assignment.txt"))
    if not files:
        return None
    text = files[-1].read_text()
    block = re.search(r"^allocation \d+: size \d+,? preallocated-temp:\n(.*?)(?=^allocation |\Z)", text, re.S | re.M)
    if not block:
        return None
    values = {}
    for name, size, shape in re.findall(r"value: <\d+ ([^ >]+)[^>]*> \(size=(\d+),offset=\d+\): (\S+)",
                                        block.group(1)):
        values.setdefault(shape.split("{")[0], (int(size), name))
    ranked = sorted(values.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"shape": shape, "gib": size / 2**30, "example_op": name} for shape, (size, name) in ranked]


# --- the parent: one subprocess per variant ----------------------------------------------------------------

def memory(args) -> dict:
    """Runs the variants named by bench_train's --memory_* flags; returns the "memory" entry of the JSON."""
    extra = []
    if args.memory_samples:
        extra.append(f"--config.rollout.samples_per_prompt={args.memory_samples}")
        # 8 prompts over data x fsdp = 4 shards: keep one row per shard per micro-batch.
        extra.append(f"--config.micro_batches={max(1, 8 * args.memory_samples // 4)}")
    if args.memory_new_tokens:
        extra.append(f"--config.rollout.max_new_tokens={args.memory_new_tokens}")
    runs = MEMORY_RUNS if not args.memory_variants else [(v, []) for v in args.memory_variants.split(",")]
    rows = []
    for variant, overrides in runs:
        overrides = extra + overrides
        cmd = [sys.executable, str(Path(__file__).resolve()), variant, json.dumps(overrides)]
        cli = (f"python -m tipjax.train --config=configs/{MEMORY_CONFIG.name}:{variant} --dry_run --devices=8 "
               + " ".join(overrides)).strip()
        dump = tempfile.mkdtemp(prefix="bench_train_xla_")
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip(),
                   BENCH_XLA_DUMP=dump)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        row = {"variant": variant, "rule": MEMORY_VARIANTS[variant][0], "ratio": MEMORY_VARIANTS[variant][1],
               "overrides": overrides, "cli_equivalent": cli}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.memory_timeout, env=env)
        except subprocess.TimeoutExpired:
            row["error"] = f"compile exceeded {args.memory_timeout} s"
            rows.append(row)
            print(f"{variant}: timed out", flush=True)
            continue
        finally:
            shutil.rmtree(dump, ignore_errors=True)
        wall = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        # ru_maxrss of children is the max over all children so far; only a rise is attributable to this one.
        row.update(wall_s=round(wall, 1), host_peak_rss_gib=round(rss / 2**20, 2) if rss > before else None)
        report = parse_report(proc.stdout)
        if proc.returncode or report is None:
            row["error"] = (proc.stderr or proc.stdout)[-2000:]
            print(f"{variant}: failed\n{row['error']}", flush=True)
        else:
            row.update(report)
            p = report["per_device_gib"]
            print(f"{variant:10s} {' '.join(overrides):28s} args {p['arguments']:.2f} out {p['outputs']:.2f} "
                  f"temp {p['temporaries']:.2f} peak {p['peak_estimate']:.2f} GiB/device "
                  f"(compile {report['compile_s']} s, wall {wall:.0f} s)", flush=True)
        rows.append(row)
    return {"config": str(MEMORY_CONFIG.relative_to(ROOT)),
            "command": " ".join(["python scripts/bench_train.py", *args.argv]), "rows": rows,
            "tipjax_commit": git_revision()}


def git_revision() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "tipjax"], cwd=ROOT, capture_output=True, text=True)
    return head.stdout.strip() + (" + uncommitted tipjax/ changes" if dirty.stdout.strip() else "")


def parse_report(stdout: str):
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    start = stdout.rfind("\n{\n")  # python -m tipjax.train --dry_run prints an indented JSON object last
    if start >= 0:
        try:
            return json.loads(stdout[start:])
        except json.JSONDecodeError:
            return None
    return None


if __name__ == "__main__":  # the child: python scripts/bench_memory.py VARIANT '["--config.x=y", ...]'
    sys.path.insert(0, str(ROOT))
    dry_run_child(sys.argv[1], json.loads(sys.argv[2]))
