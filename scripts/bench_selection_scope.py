"""What batch-scope selection costs under micro-batching: the statistics pass over the whole batch (norm_scope
"batch") against the one-pass per-micro-batch selection (norm_scope "micro_batch"), same step otherwise.

    python scripts/bench_selection_scope.py [--size small] [--micro_batches 4] [--steps 5]

Both steps run alternately in one process on the bench_train shapes (one device, CPU), so load hits both alike;
medians over the timed steps. Memory: XLA's compiled memory analysis (temporaries) of each step. The result is
printed as a Markdown table and written to docs/bench_selection_scope.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import bench_train  # scripts/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent


def build(size: str, variant: str, micro_batches: int, scope: str):
    import jax

    from tipjax import train

    cfg = bench_train.train_config(size, variant)
    cfg = dataclasses.replace(cfg, micro_batches=micro_batches, selection=dataclasses.replace(
        cfg.selection, options={**cfg.selection.options, "norm_scope": scope}))
    s = train.setup(cfg)
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    return cfg, s, state


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=sorted(bench_train.sizes()))
    parser.add_argument("--variant", default="soft_or50")
    parser.add_argument("--micro_batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)

    import jax

    from tipjax.prompt_source import SyntheticPrompts

    runs = {}
    for scope in ("micro_batch", "batch"):
        cfg, s, state = build(args.size, args.variant, args.micro_batches, scope)
        prompts = SyntheticPrompts(cfg.data, cfg.prompts_per_step, s.student.config.vocab_size)
        batch = next(prompts)
        compiled = s.step_fn.lower(state, s.teacher, batch["prompt_ids"], batch["prompt_mask"]).compile()
        runs[scope] = dict(s=s, state=state, prompts=prompts, times=[],
                           temp_mib=compiled.memory_analysis().temp_size_in_bytes / 2**20)
        state, _ = s.step_fn(state, s.teacher, batch["prompt_ids"], batch["prompt_mask"])  # warm-up
        runs[scope]["state"] = jax.block_until_ready(state)
    for _ in range(args.steps):
        for run in runs.values():
            batch = next(run["prompts"])
            t0 = time.perf_counter()
            run["state"], metrics = run["s"].step_fn(run["state"], run["s"].teacher, batch["prompt_ids"],
                                                     batch["prompt_mask"])
            jax.block_until_ready(metrics)
            run["times"].append(time.perf_counter() - t0)
    result = {scope: {"step_s_median": statistics.median(r["times"]), "temp_mib": r["temp_mib"]}
              for scope, r in runs.items()}
    base, new = result["micro_batch"], result["batch"]
    result["settings"] = dict(size=args.size, variant=args.variant, micro_batches=args.micro_batches, steps=args.steps,
                              device=str(jax.devices()[0].device_kind), jax=jax.__version__)
    result["ratio_step_time"] = new["step_s_median"] / base["step_s_median"]
    result["ratio_temp_memory"] = new["temp_mib"] / base["temp_mib"]
    print(f"| norm_scope | step s (median of {args.steps}) | temporaries MiB |\n|---|---|---|")
    for scope in ("micro_batch", "batch"):
        print(f"| {scope} | {result[scope]['step_s_median']:.3f} | {result[scope]['temp_mib']:.1f} |")
    print(f"batch / micro_batch: step time {result['ratio_step_time']:.2f}x, temporaries "
          f"{result['ratio_temp_memory']:.2f}x")
    (ROOT / "docs" / "bench_selection_scope.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
