"""Benchmark of TIP selection: loss+grad memory at paper size (AOT, abstract inputs) and CPU wall time.

    python scripts/bench_selection.py            # both parts, table to stdout, JSON to docs/bench_selection.json
    python scripts/bench_selection.py --part memory

(a) Memory: temp bytes of jax.jit(loss_and_grad) compiled for Qwen3-4B student (Ds=2560) / Qwen3-8B teacher
    (Dt=4096), V=151936, one rollout of T=16384 positions, bf16 hidden states and heads, against a naive
    implementation that materialises both [T, V] logit arrays and masks them. Nothing is allocated.
(b) Time: CPU wall time of loss+grad at T=2048, V=32000, D=512, each rule vs the all-token loss and vs a
    straightforward PyTorch implementation, median of repeats after a warm-up, all in one run.
"""

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from tipjax import selection

CASES = (("all", 1.0), ("soft_or", 0.5), ("soft_or", 0.2), ("entropy_sample", 0.5), ("q3", 0.1))
OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "bench_selection.json"


def tip_loss(rule, ratio, chunk_size, backward):
    def loss(hs, ws, ht, wt, mask, rng):
        # The metrics are returned (as the trainer logs them): otherwise XLA drops the statistics a rule does not read.
        return selection.distill_loss(
            hs, ws, ht, wt, mask, rule=rule, ratio=ratio, rng=rng, chunk_size=chunk_size, backward=backward
        )

    return loss


def naive_loss(hs, ws, ht, wt, mask, rng):
    """Full [B, T, V] logits for both models, masked mean of the full-vocabulary reverse KL."""
    del rng
    logits_s = jnp.einsum("BTD,DV->BTV", hs, ws, preferred_element_type=jnp.float32)
    logits_t = jax.lax.stop_gradient(jnp.einsum("BTD,DV->BTV", ht, wt, preferred_element_type=jnp.float32))
    per_token = selection.rkl(logits_s, logits_t)
    m = mask.astype(jnp.float32)
    return jnp.sum(per_token * m) / jnp.maximum(jnp.sum(m), 1.0), {}


def temp_bytes(loss, b, t, ds, dt, v, dtype):
    abstract = (
        jax.ShapeDtypeStruct((b, t, ds), dtype),
        jax.ShapeDtypeStruct((ds, v), dtype),
        jax.ShapeDtypeStruct((b, t, dt), dtype),
        jax.ShapeDtypeStruct((dt, v), dtype),
        jax.ShapeDtypeStruct((b, t), jnp.bool_),
        jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)).lower(*abstract).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def memory_part(chunk_size):
    dims = {"b": 1, "t": 16384, "ds": 2560, "dt": 4096, "v": 151936, "dtype": jnp.bfloat16}
    naive = temp_bytes(naive_loss, **dims)
    rows = [{"rule": "naive", "ratio": 1.0, "backward": "-", "temp_gib": naive / 2**30, "vs_naive": 1.0}]
    for backward in ("fused", "remat"):
        for rule, ratio in CASES:
            got = temp_bytes(tip_loss(rule, ratio, chunk_size, backward), **dims)
            rows.append(
                {"rule": rule, "ratio": ratio, "backward": backward, "temp_gib": got / 2**30, "vs_naive": got / naive}
            )
    return rows


def timed(fn, repeats):
    """(median wall seconds, median process CPU seconds) of fn() after one warm-up call (which also compiles).

    CPU seconds count this process's threads only, so they are less disturbed by other jobs on shared cores.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def torch_step(hs, ws, ht, wt, mask):
    """Straightforward PyTorch: full logits, log_softmax, masked reverse KL, backward to hidden and head."""
    import torch

    hs = torch.from_numpy(hs).requires_grad_(True)
    ws = torch.from_numpy(ws).requires_grad_(True)
    ht, wt, mask = torch.from_numpy(ht), torch.from_numpy(wt), torch.from_numpy(mask)

    def step():
        log_ps = torch.log_softmax(hs @ ws, dim=-1)
        with torch.no_grad():
            log_pt = torch.log_softmax(ht @ wt, dim=-1)
        per_token = (log_ps.exp() * (log_ps - log_pt)).sum(-1)
        loss = (per_token * mask).sum() / mask.sum()
        return torch.autograd.grad(loss, (hs, ws))

    return step


def time_part(chunk_size, repeats):
    import torch

    torch.set_num_threads(2)
    b, t, ds, dt, v, prompt = 1, 2048, 512, 768, 32000, 256
    rng = np.random.default_rng(0)
    arrays = (
        rng.standard_normal((b, t, ds), np.float32),
        rng.standard_normal((ds, v), np.float32) / np.float32(np.sqrt(ds)),
        rng.standard_normal((b, t, dt), np.float32),
        rng.standard_normal((dt, v), np.float32) / np.float32(np.sqrt(dt)),
    )
    mask = np.ones((b, t), np.float32)
    mask[:, :prompt] = 0
    jax_args = tuple(jnp.asarray(x) for x in arrays) + (jnp.asarray(mask), jax.random.PRNGKey(0))

    def jax_times(loss):
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        return timed(lambda: jax.block_until_ready(fn(*jax_args)), repeats)

    cases = [("torch naive", 1.0, "-", torch_step(*arrays, mask)), ("jax naive", 1.0, "-", None)]
    cases += [(rule, ratio, "fused", None) for rule, ratio in CASES]
    cases += [("all", 1.0, "remat", None), ("soft_or", 0.5, "remat", None)]
    rows = []
    for rule, ratio, backward, step in cases:
        if step is not None:
            wall, cpu = timed(step, repeats)
        else:
            wall, cpu = jax_times(naive_loss if rule == "jax naive" else tip_loss(rule, ratio, chunk_size, backward))
        rows.append({"rule": rule, "ratio": ratio, "backward": backward, "seconds": wall, "cpu_seconds": cpu})
    torch_row, all_row = rows[0], rows[2]
    for row in rows:
        row["vs_all"] = row["seconds"] / all_row["seconds"]
        row["vs_torch"] = row["seconds"] / torch_row["seconds"]
        row["cpu_vs_all"] = row["cpu_seconds"] / all_row["cpu_seconds"]
        row["cpu_vs_torch"] = row["cpu_seconds"] / torch_row["cpu_seconds"]
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("memory", "time", "both"), default="both")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = {}
    if args.part in ("memory", "both"):
        result["memory"] = memory_part(args.chunk_size)
        print("| rule | ratio | backward | loss+grad temp (GiB) | vs naive |\n|---|---|---|---|---|")
        for row in result["memory"]:
            print(
                f"| {row['rule']} | {row['ratio']} | {row['backward']} | {row['temp_gib']:.2f} | {row['vs_naive']:.1%} |"
            )
    if args.part in ("time", "both"):
        result["time"] = time_part(args.chunk_size, args.repeats)
        print(
            "\n| rule | ratio | backward | wall s | wall vs all | wall vs torch | CPU s | CPU vs all | CPU vs torch |"
            "\n|---|---|---|---|---|---|---|---|---|"
        )
        for row in result["time"]:
            print(
                f"| {row['rule']} | {row['ratio']} | {row['backward']} | {row['seconds']:.2f} | {row['vs_all']:.2f} "
                f"| {row['vs_torch']:.2f} | {row['cpu_seconds']:.2f} | {row['cpu_vs_all']:.2f} "
                f"| {row['cpu_vs_torch']:.2f} |"
            )
    result["config"] = {"chunk_size": args.chunk_size, "repeats": args.repeats, "jax": jax.__version__}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
