"""Benchmark of the rollout sampler on CPU: tipjax `sampling.generate` vs transformers `generate`.

    python scripts/bench_sampling.py            # table to stdout, JSON to docs/bench_sampling.json

One random Qwen3-shaped model (hidden 256, 4 layers, 4 heads / 2 kv heads, head_dim 64, intermediate 768,
vocab 4096) is built with transformers (seeded), saved, and loaded by tipjax with models.load_hf, so both
sides run identical fp32 weights. Both sample at temperature 1 with top-k and top-p off and no EOS, so each
call makes exactly batch x max_new_tokens tokens (checked). Times are whole `generate` calls (prefill
included): the first call of each, then --repeats more (--sweep-repeats for the max_new_tokens sweep) that
alternate between the two so background load hits both alike; the table gives the median and the best.
Compile time is the first call minus the median. torch runs with --torch-threads (2), JAX with its
defaults.
"""

import argparse
import itertools
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from tipjax import models, sampling

OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "bench_sampling.json"


def build_models(args, folder):
    """A seeded random HF Qwen3 model, and the same weights loaded by tipjax."""
    torch.manual_seed(args.seed)
    config = transformers.Qwen3Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)
    hf_model = transformers.Qwen3ForCausalLM(config).eval()
    hf_model.save_pretrained(folder)
    return hf_model, models.load_hf(folder, dtype=jnp.float32)


def check_same_logits(hf_model, model, prompt):
    with torch.no_grad():
        ref = hf_model(torch.from_numpy(prompt)).logits.numpy()
    ours = np.asarray(model(jnp.asarray(prompt)))
    err = float(np.max(np.abs(ours - ref)))
    assert err < 1e-3, f"tipjax and transformers logits differ by {err}"
    return err


def tipjax_sampler(model, prompt, max_new_tokens, seed):
    ids, mask = jnp.asarray(prompt), jnp.ones(prompt.shape, jnp.int32)
    keys = itertools.count(seed)  # a fresh rng per call

    def run():
        out = sampling.generate(model, ids, mask, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0,
                                top_k=0, eos_token_id=None, rng=jax.random.key(next(keys)))
        jax.block_until_ready(out)
        assert out.tokens.shape == (prompt.shape[0], prompt.shape[1] + max_new_tokens)
        assert int(out.lengths.sum()) == prompt.shape[0] * max_new_tokens, "tipjax stopped early"

    return run


def transformers_sampler(hf_model, prompt, max_new_tokens):
    ids = torch.from_numpy(prompt)
    # Everything explicit: a None top_k would fall back to transformers' global default of 50.
    config = transformers.GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0, use_cache=True)

    def run():
        with torch.no_grad():
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        assert tuple(out.shape) == (prompt.shape[0], prompt.shape[1] + max_new_tokens), "transformers stopped early"

    return run


def timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(runs, repeats):
    """{name: (first-call seconds, [timed seconds])}; timed calls alternate between runs so load hits both."""
    first = {name: timed(run) for name, run in runs.items()}
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(timed(run))
    return {name: (first[name], times[name]) for name in runs}


def row(name, new_tokens, batch, first, times):
    tokens, steady = batch * new_tokens, statistics.median(times)
    return {"impl": name, "max_new_tokens": new_tokens, "tokens": tokens, "compile_s": first - steady,
            "steady_s": steady, "best_s": min(times), "times_s": times, "tokens_per_s": tokens / steady,
            "best_tokens_per_s": tokens / min(times), "ms_per_step": 1e3 * steady / new_tokens}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128, help="the headline comparison")
    parser.add_argument("--sweep", type=int, nargs="*", default=[256, 512, 1024], help="max_new_tokens growth")
    parser.add_argument("--sweep-transformers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls at --new-tokens")
    parser.add_argument("--sweep-repeats", type=int, default=1, help="timed calls per sweep length")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    prompt = np.random.default_rng(args.seed).integers(0, args.vocab, (args.batch, args.prompt_len), dtype=np.int32)
    with tempfile.TemporaryDirectory() as folder:
        hf_model, model = build_models(args, folder)
    logit_err = check_same_logits(hf_model, model, prompt)

    load_before, start = os.getloadavg(), time.perf_counter()
    rows, ratios = [], {}
    for n in [args.new_tokens, *args.sweep]:
        runs = {"tipjax": tipjax_sampler(model, prompt, n, args.seed)}
        if n == args.new_tokens or args.sweep_transformers:
            runs["transformers"] = transformers_sampler(hf_model, prompt, n)
        results = measure(runs, args.repeats if n == args.new_tokens else args.sweep_repeats)
        new_rows = {name: row(name, n, args.batch, *got) for name, got in results.items()}
        rows.extend(new_rows.values())
        if "transformers" in new_rows:
            ratios[n] = {stat: new_rows["tipjax"][stat] / new_rows["transformers"][stat]
                         for stat in ("tokens_per_s", "best_tokens_per_s")}
        print(f"done max_new_tokens={n} at {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)

    print("| impl | max_new_tokens | compile (s) | median (s) | tokens/s (median) | tokens/s (best) | ms/token-step "
          "| tipjax/transformers (median, best) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = ratios.get(r["max_new_tokens"]) if r["impl"] == "tipjax" else None
        ratio = f"{ratio['tokens_per_s']:.2f}x, {ratio['best_tokens_per_s']:.2f}x" if ratio else ""
        print(f"| {r['impl']} | {r['max_new_tokens']} | {r['compile_s']:.2f} | {r['steady_s']:.3f} | "
              f"{r['tokens_per_s']:.0f} | {r['best_tokens_per_s']:.0f} | {r['ms_per_step']:.2f} | {ratio} |")
    result = {"settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
              "versions": {"jax": jax.__version__, "torch": torch.__version__,
                           "transformers": transformers.__version__},
              "torch_threads": torch.get_num_threads(), "jax_devices": [str(d) for d in jax.devices()],
              "load_avg_1_5_15": {"before": load_before, "after": os.getloadavg()},
              "wall_s": time.perf_counter() - start, "max_abs_logit_diff": logit_err, "rows": rows,
              "ratio_tipjax_over_transformers": {str(n): r for n, r in ratios.items()}}
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
