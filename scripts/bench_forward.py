"""Forward throughput: tipjax (jitted) vs transformers (PyTorch, CPU) on the same random weights.

    python scripts/bench_forward.py            # Qwen3 shape: hidden 512, 8 layers, 8 heads / 4 kv, vocab 32000
    python scripts/bench_forward.py --quick    # a smaller smoke run

Both sides get the same fp32 weights (transformers model -> save_pretrained -> models.load_hf) and the same
[batch, seq] token ids, and return full [B, T, V] fp32 logits. tipjax is timed after compilation (compile
time reported separately); each side reports the median of --repeats timed calls after a warm-up.
Writes docs/bench_forward.json and the "## Forward" section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import perf_doc  # scripts/ is on sys.path when run as a script
from tipjax import models

DOCS = Path(__file__).resolve().parent.parent / "docs"


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--mlp", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="hidden 128, 2 layers, vocab 4096, 2 x 64 tokens")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ untouched")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.mlp, args.layers, args.vocab, args.batch, args.seq = 128, 384, 2, 4096, 2, 64

    hf_config = transformers.Qwen3Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    torch_model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save_pretrained(tmp)
        model = models.load_hf(tmp, jnp.float32)
    ids = np.random.RandomState(0).randint(0, args.vocab, (args.batch, args.seq)).astype(np.int32)
    tokens = args.batch * args.seq

    @jax.jit
    def forward(model, ids):
        return model(ids)

    start = time.perf_counter()
    compiled = forward.lower(model, jnp.asarray(ids)).compile()
    compile_s = time.perf_counter() - start
    ids_jax = jnp.asarray(ids)
    ours = np.asarray(compiled(model, ids_jax))  # warm-up

    def run_jax():
        compiled(model, ids_jax).block_until_ready()

    ids_torch = torch.from_numpy(ids.astype(np.int64))

    def run_torch():
        with torch.inference_mode():
            return torch_model(ids_torch).logits

    ref = run_torch().numpy()  # warm-up
    rel_err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    # Interleave the two so that load from other processes on shared cores hits both alike.
    jax_times, torch_times = [], []
    for _ in range(args.repeats):
        jax_times += timed(run_jax, 1)
        torch_times += timed(run_torch, 1)
    jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)
    result = {
        "command": " ".join(["python scripts/bench_forward.py", *(sys.argv[1:] if argv is None else argv)]),
        "shape": {k: getattr(args, k) for k in ("hidden", "mlp", "layers", "heads", "kv_heads", "vocab", "batch",
                                                "seq")},
        "dtype": "float32",
        "tipjax_tokens_per_s": tokens / jax_s,
        "transformers_tokens_per_s": tokens / torch_s,
        "ratio": torch_s / jax_s,
        "tipjax_median_s": jax_s,
        "transformers_median_s": torch_s,
        "tipjax_compile_s": compile_s,
        "repeats": args.repeats,
        "logits_rel_err": rel_err,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), jax {jax.__version__} "
                   f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
                   f"transformers {transformers.__version__}",
    }
    table = "\n".join([
        "| implementation | tokens/s | median s / call | compile s |",
        "|---|---:|---:|---:|",
        f"| tipjax (jit) | {result['tipjax_tokens_per_s']:,.0f} | {jax_s:.3f} | {compile_s:.1f} |",
        f"| transformers (PyTorch eager) | {result['transformers_tokens_per_s']:,.0f} | {torch_s:.3f} | - |",
    ])
    print(table)
    print(f"ratio tipjax / transformers = {result['ratio']:.2f}x   (logits rel. max error {rel_err:.1e})")
    if not args.no_write:
        DOCS.mkdir(exist_ok=True)
        (DOCS / "bench_forward.json").write_text(json.dumps(result, indent=2) + "\n")
        write_section(result, table)
    return result


def write_section(result: dict, table: str) -> None:
    """Replaces only the "## Forward" section of docs/performance.md (other sections belong to others)."""
    s = result["shape"]
    section = (
        "## Forward\n\n"
        f"Full-sequence forward to fp32 logits, Qwen3 shape (hidden {s['hidden']}, MLP {s['mlp']}, {s['layers']} "
        f"layers, {s['heads']} heads / {s['kv_heads']} kv heads, vocab {s['vocab']}), batch {s['batch']} x "
        f"{s['seq']} tokens, fp32, same random weights on both sides; median of {result['repeats']} calls.\n\n"
        f"Command: `{result['command']}` (writes `docs/bench_forward.json`).\n\n"
        f"{table}\n\n"
        f"Ratio tipjax / transformers: **{result['ratio']:.2f}x** (target >= 1.5x: "
        f"{'met' if result['ratio'] >= 1.5 else '**not met**'}). "
        f"Logits agree to {result['logits_rel_err']:.1e} relative max error.\n"
        f"Machine: {result['machine']}; only the same-run ratio is meaningful. On loaded cores torch's OpenMP "
        "threads stall and inflate the ratio (runs at load 5-9 gave 1.57x-2.09x); at this size both sides are bound "
        "by the fp32 matmuls, so on a quiet machine they end up level.\n"
    )
    perf_doc.replace_section("Forward", section)


if __name__ == "__main__":
    main()
