"""Training-step benchmarks: tipjax's compiled OPD step vs PyTorch + transformers, and dry-run memory at real size.

    python scripts/bench_train.py              # part 1: step throughput on CPU (~10 minutes on 2 shared cores)
    python scripts/bench_train.py --quick      # part 1 on the tiny shapes only
    python scripts/bench_train.py --memory     # part 2: AOT memory per device, Qwen3-8B -> 4B, 8 fake devices (~4 min)
    python scripts/bench_train.py --docs_only  # re-render the docs section from docs/bench_train.json, run nothing

Part 1 runs one OPD step both ways on the same shapes and the same prompts:
  tipjax        tipjax.train.setup(cfg) on one device, s.step_fn looped (rollout, teacher, TIP loss, AdamW: one program)
  transformers  scripts/torch_reference.py: generate -> teacher forward -> student forward -> full-vocabulary
                reverse KL on the kept tokens -> backward -> clip_grad_norm_ -> AdamW
Weights are random on both sides (same HF config dicts, not the same values). Steps alternate between the two
implementations so load from other processes hits both alike; medians over the timed steps.

Part 2 (scripts/bench_memory.py) AOT-compiles the step for the paper's Qwen3-8B -> Qwen3-4B run (prompt 2048,
response 8192, 8 prompts x 16 samples, bf16) on 8 fake CPU devices, one subprocess per rule, and records
compiled.memory_analysis().

Both parts merge into docs/bench_train.json; scripts/bench_train_docs.py rewrites only the "## Training" section of
docs/performance.md from it (prose in scripts/templates/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import bench_memory  # scripts/ is on sys.path when run as a script
import bench_train_docs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
JSON_PATH = DOCS / "bench_train.json"


# --- part 1: shapes ---------------------------------------------------------------------------------------

def qwen3_arch(vocab, hidden, layers, intermediate, heads, kv_heads, head_dim, init_std):
    return dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=vocab, hidden_size=hidden,
                intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, head_dim=head_dim, rms_norm_eps=1e-6, rope_theta=10000.0,
                max_position_embeddings=512, tie_word_embeddings=False, initializer_range=init_std,
                bos_token_id=1, eos_token_id=2)


def sizes():
    """name -> config overrides on top of configs/tiny.py (the tiny one is configs/tiny.py itself)."""
    return {
        "tiny": {},
        "small": dict(student=qwen3_arch(4096, 256, 4, 768, 4, 2, 64, 0.05),
                      teacher=qwen3_arch(4096, 384, 6, 1152, 6, 2, 64, 0.05),
                      prompt_len=32, new_tokens=64),
    }


def train_config(size: str, variant: str):
    from tipjax import config_loader
    from tipjax.config_schema import MeshSpec, TrainConfig

    cfg = config_loader.to_dataclass(config_loader.load_config(f"{ROOT}/configs/tiny.py:{variant}", []), TrainConfig)
    cfg = dataclasses.replace(cfg, mesh=MeshSpec(data=1, fsdp=1, tensor=1))
    over = sizes()[size]
    if over:
        cfg = dataclasses.replace(
            cfg, student=dataclasses.replace(cfg.student, arch=over["student"]),
            teacher=dataclasses.replace(cfg.teacher, arch=over["teacher"]),
            data=dataclasses.replace(cfg.data, max_prompt_length=over["prompt_len"],
                                     synthetic_max_len=over["prompt_len"]),
            rollout=dataclasses.replace(cfg.rollout, max_new_tokens=over["new_tokens"]))
    return cfg


# --- part 1: the benchmark ----------------------------------------------------------------------------------

def bench_case(size: str, variant: str, steps: int, threads: tuple[int, ...]) -> dict:
    import jax
    import numpy as np
    import torch

    from tipjax import train
    from tipjax.prompt_source import SyntheticPrompts
    from torch_reference import torch_models, torch_step

    cfg = train_config(size, variant)
    start = time.perf_counter()
    s = train.setup(cfg)
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    source = SyntheticPrompts(cfg.data, cfg.prompts_per_step, s.student.config.vocab_size, avoid_ids=(2,))
    batches = [next(source) for _ in range(steps + 1)]
    dev = [tuple(jax.device_put(b[k], s.batch_sharding) for k in ("prompt_ids", "prompt_mask")) for b in batches]
    t0 = time.perf_counter()
    compiled = s.step_fn.lower(state, s.teacher, *dev[0]).compile()
    compile_s = time.perf_counter() - t0
    setup_s = t0 - start

    student, teacher, opt = torch_models(cfg)
    # Warm-up: one step each (the first jitted call also pays any remaining dispatch set-up).
    state, metrics = s.step_fn(state, s.teacher, *dev[0])
    jax.block_until_ready(metrics)
    for t in threads:
        torch.set_num_threads(t)
        torch_step(student, teacher, opt, batches[0]["prompt_ids"], batches[0]["prompt_mask"], cfg)

    jax_s, jax_tok, jax_loss = [], [], []
    torch_s = {t: [] for t in threads}
    torch_tok, torch_loss = [], []
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        state, metrics = s.step_fn(state, s.teacher, *dev[i])
        metrics = jax.device_get(metrics)
        jax_s.append(time.perf_counter() - t0)
        jax_tok.append(float(metrics["response_tokens"]))
        jax_loss.append(float(metrics["loss"]))
        for t in threads:
            torch.set_num_threads(t)
            t0 = time.perf_counter()
            tok, loss = torch_step(student, teacher, opt, batches[i]["prompt_ids"], batches[i]["prompt_mask"], cfg)
            torch_s[t].append(time.perf_counter() - t0)
            torch_tok.append(tok)
            torch_loss.append(loss)
    assert s.step_fn._cache_size() == 1, "the step recompiled"
    del compiled
    jm = statistics.median(jax_s)
    tm = {t: statistics.median(v) for t, v in torch_s.items()}
    main_t = threads[0]
    best_t = min(tm, key=tm.get)
    st, te = cfg.student.arch, cfg.teacher.arch
    return {
        "size": size, "rule": cfg.selection.rule, "retention": cfg.selection.ratio,
        "student": f"hidden {st['hidden_size']} x {st['num_hidden_layers']} layers, mlp {st['intermediate_size']}",
        "teacher": f"hidden {te['hidden_size']} x {te['num_hidden_layers']} layers, mlp {te['intermediate_size']}",
        "vocab": st["vocab_size"], "prompts": cfg.prompts_per_step, "samples": cfg.rollout.samples_per_prompt,
        "prompt_len": cfg.data.max_prompt_length, "new_tokens": cfg.rollout.max_new_tokens, "timed_steps": steps,
        "tipjax_steps_per_s": 1.0 / jm, "tipjax_median_s": jm,
        "tipjax_response_tokens_per_s": float(np.median(jax_tok)) / jm,
        "transformers_threads": main_t,
        "transformers_steps_per_s": 1.0 / tm[main_t], "transformers_median_s": tm[main_t],
        "transformers_response_tokens_per_s": float(np.median(torch_tok)) / tm[main_t],
        "ratio": tm[main_t] / jm,
        "transformers_by_threads": {str(t): {"median_s": tm[t], "steps_per_s": 1.0 / tm[t],
                                             "ratio": tm[t] / jm, "step_s": torch_s[t]} for t in threads},
        "transformers_best_threads": best_t,
        "transformers_best_response_tokens_per_s": float(np.median(torch_tok)) / tm[best_t],
        "ratio_vs_best_threads": tm[best_t] / jm,
        "tipjax_compile_s": compile_s, "tipjax_setup_s": setup_s, "tipjax_step_s": jax_s,
        "tipjax_loss_first_last": [jax_loss[0], jax_loss[-1]],
        "transformers_loss_first_last": [torch_loss[0], torch_loss[-1]],
    }


def throughput(args) -> dict:
    import jax
    import torch
    import transformers

    cases = [("tiny", "all"), ("tiny", "soft_or50")]
    if not args.quick:
        cases += [("small", "all"), ("small", "soft_or50")]
    rows = []
    for size, variant in cases:
        row = bench_case(size, variant, args.steps, tuple(args.torch_threads))
        print(f"{size:6s} {variant:10s} tipjax {row['tipjax_steps_per_s']:.2f} steps/s "
              f"(compile {row['tipjax_compile_s']:.1f} s)  transformers {row['transformers_steps_per_s']:.2f} "
              f"steps/s ({row['transformers_threads']} threads)  ratio {row['ratio']:.2f}x; vs best thread count "
              f"({row['transformers_best_threads']}) {row['ratio_vs_best_threads']:.2f}x", flush=True)
        rows.append(row)
    return {
        "command": " ".join(["python scripts/bench_train.py", *args.argv]),
        "cases": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), jax {jax.__version__} "
                   f"({jax.default_backend()}), torch {torch.__version__} (threads {args.torch_threads}), "
                   f"transformers {transformers.__version__}",
    }


# --- command line ------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7, help="timed steps per case (after one warm-up step)")
    parser.add_argument("--torch_threads", type=int, nargs="+", default=[2, 1],
                        help="torch.set_num_threads values to time; the first is the headline baseline")
    parser.add_argument("--quick", action="store_true", help="part 1 on the tiny shapes only")
    parser.add_argument("--memory", action="store_true", help="part 2 (dry-run memory) instead of part 1")
    parser.add_argument("--memory_variants", default="",
                        help="comma-separated variants (default: the four rules, then all and soft_or50 with "
                             "rollout.groups=8)")
    parser.add_argument("--memory_samples", type=int, default=0, help="reduce samples per prompt (default 16)")
    parser.add_argument("--memory_new_tokens", type=int, default=0, help="reduce the response length (default 8192)")
    parser.add_argument("--memory_timeout", type=int, default=900, help="seconds per AOT compile")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ untouched")
    parser.add_argument("--docs_only", action="store_true",
                        help="rewrite the docs section from docs/bench_train.json without running anything")
    args = parser.parse_args(argv)
    args.argv = argv
    sys.path.insert(0, str(ROOT))
    result = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
    if args.docs_only:
        bench_train_docs.write_docs(result)
        return result
    if args.memory:
        result["memory"] = bench_memory.memory(args)
    else:
        result["throughput"] = throughput(args)
    if not args.no_write:
        DOCS.mkdir(exist_ok=True)
        JSON_PATH.write_text(json.dumps(result, indent=2) + "\n")
        bench_train_docs.write_docs(result)
    return result


if __name__ == "__main__":
    main()
