"""Benchmark: a prompt's samples sharing one copy of its keys (sampling.generate's share_prompt) vs every row
prefilling and storing its own copy, in the same process.

    python scripts/bench_shared_prompt.py            # table to stdout, JSON to docs/bench_shared_prompt.json
    python scripts/bench_shared_prompt.py --smoke    # tiny shapes, no JSON

A seeded random Qwen3-shaped model (tipjax's own init, fp32 by default) samples P prompts x n samples at
temperature 1 with no EOS, so every call makes the same tokens' worth of work. Times are whole `generate`
calls (prefill included): after one compile call each, --repeats calls alternate between the two settings so
background load hits both alike; the table gives medians and the ratio. Both settings draw the same tokens up
to float rounding: the table counts the rows whose tokens agree and gives the largest log-probability gap
before a row's first different token. "temp MiB" is XLA's temporary buffer size of the compiled
program (memory_analysis), where the KV cache lives.
"""

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from tipjax import models, sampling

OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "bench_shared_prompt.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--cases", nargs="+", default=["256:128", "1024:128", "256:512"],
                   help="prompt length:new tokens per case")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat, no JSON")
    p.add_argument("--out", type=pathlib.Path, default=OUT)
    args = p.parse_args(argv)
    if args.smoke:
        args.prompts, args.samples, args.cases, args.layers, args.hidden = 2, 4, ["32:8"], 2, 64
        args.heads, args.kv_heads, args.head_dim, args.vocab, args.repeats = 4, 2, 32, 128, 1
    args.cases = [tuple(int(x) for x in case.split(":")) for case in args.cases]
    return args


def build_model(args):
    cfg = models.ModelConfig.from_hf_dict({
        "architectures": ["Qwen3ForCausalLM"], "vocab_size": args.vocab, "hidden_size": args.hidden,
        "intermediate_size": 3 * args.hidden, "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "head_dim": args.head_dim,
        "tie_word_embeddings": False}, param_dtype=args.dtype, compute_dtype=args.dtype)
    return models.init(cfg, jax.random.key(0))


def run_case(model, args, prompt_len, new):
    rng = np.random.default_rng(prompt_len)
    ids = jnp.asarray(rng.integers(0, args.vocab, (args.prompts, prompt_len)), jnp.int32)
    # left padding: prompt i has its first i * prompt_len / (4 * prompts) columns empty
    starts = np.arange(args.prompts) * prompt_len // (4 * args.prompts)
    mask = jnp.asarray(np.arange(prompt_len)[None] >= starts[:, None], jnp.int32)
    kw = dict(max_new_tokens=new, temperature=1.0, num_samples=args.samples, buckets=(prompt_len,))

    def call(share, seed):
        out = sampling.generate(model, ids, mask, rng=jax.random.key(seed), share_prompt=share, **kw)
        return jax.block_until_ready(out)

    temp = {}
    for share in (True, False):
        settings = sampling.DecodeSettings(prompt_len=prompt_len, max_new_tokens=new, temperature=1.0, top_k=0,
                                           top_p=1.0, eos_ids=(), pad_id=0,
                                           steps_per_loop=sampling.default_steps_per_loop(),
                                           prompt_samples=args.samples if share else 1)
        rows = (ids, mask) if share else (jnp.repeat(ids, args.samples, 0), jnp.repeat(mask, args.samples, 0))
        compiled = sampling._jit_generate.lower(model, *rows, jax.random.key(0), settings=settings,
                                                cache_dtype=None).compile()
        temp[share] = compiled.memory_analysis().temp_size_in_bytes / 2**20
    first = {share: call(share, 0) for share in (True, False)}
    same, gap = agreement(first[True], first[False])
    times = {True: [], False: []}
    for r in range(args.repeats):
        for share in ((True, False) if r % 2 == 0 else (False, True)):
            t0 = time.perf_counter()
            call(share, r + 1)
            times[share].append(time.perf_counter() - t0)
    shared_s, own_s = statistics.median(times[True]), statistics.median(times[False])
    return {"prompt_len": prompt_len, "new": new, "shared_s": shared_s, "own_s": own_s, "ratio": own_s / shared_s,
            "shared_temp_mib": temp[True], "own_temp_mib": temp[False], "rows_same_tokens": same,
            "rows": int(ids.shape[0] * args.samples), "max_logprob_gap_before_divergence": gap,
            "times": {"shared": times[True], "own": times[False]}}


def agreement(a, b):
    """(rows whose tokens agree, the largest log-probability gap over the tokens before each row's first
    difference): a row may part at a token whose inverse-CDF boundary the two float paths round apart."""
    ta, tb = np.asarray(a.tokens), np.asarray(b.tokens)
    gaps = np.abs(np.asarray(a.logprobs) - np.asarray(b.logprobs))
    same, gap = 0, 0.0
    for r in range(ta.shape[0]):
        differ = np.flatnonzero(ta[r] != tb[r])
        same += differ.size == 0
        gap = max(gap, float(gaps[r, :differ[0] if differ.size else None].max()))
    return same, gap


def main(argv=None):
    args = parse_args(argv)
    model = build_model(args)
    rows = [run_case(model, args, *case) for case in args.cases]
    print(f"{args.prompts} prompts x {args.samples} samples, {args.layers} layers, "
          f"{args.dtype}, {jax.default_backend()} ({jax.device_count()} devices), jax {jax.__version__}")
    print("| prompt | new | shared s | own copies s | speed-up | shared temp MiB | own temp MiB | rows with the same "
          "tokens | largest log-prob gap before a row parts |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['prompt_len']} | {r['new']} | {r['shared_s']:.3f} | {r['own_s']:.3f} | {r['ratio']:.2f}x | "
              f"{r['shared_temp_mib']:.0f} | {r['own_temp_mib']:.0f} | {r['rows_same_tokens']}/{r['rows']} | "
              f"{r['max_logprob_gap_before_divergence']:.1e} |")
    if not args.smoke:
        meta = {k: v for k, v in vars(args).items() if k not in ("out", "smoke")}
        meta.update(backend=jax.default_backend(), jax=jax.__version__, date=time.strftime("%Y-%m-%d"))
        args.out.write_text(json.dumps({"settings": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
