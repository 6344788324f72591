"""Benchmark: the OPD update running each prompt once for its n samples (step.update_shares_prompts) vs once per
row, in the same process.

    python scripts/bench_shared_update.py            # table to stdout, JSON to docs/bench_shared_update.json
    python scripts/bench_shared_update.py --smoke    # tiny shapes, no JSON

The update is steps 2-5 of the training step (step.build_update): teacher forward, student forward and backward,
the TIP loss, AdamW. bench_train.py's "small" pair (student 256 wide x 4 layers, teacher 384 x 6, vocabulary 4096,
fp32) with P prompts x n samples; every response has all its tokens (no EOS), so both settings do fixed work on
the same rows. After one compile call each, --repeats calls alternate between the settings so background load
hits both alike; the table gives medians, their ratio, XLA's temporary buffer size of each compiled update
(memory_analysis) and the loss of both (equal up to float rounding).
"""

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench_shared_update.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--cases", nargs="+", default=["64:256:1", "64:256:4", "256:128:1", "256:128:4"],
                   help="prompt length:response length:micro-batches per case")
    p.add_argument("--variant", default="all", help="configs/tiny.py variant (the selection rule)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat, no JSON")
    p.add_argument("--out", type=pathlib.Path, default=OUT)
    args = p.parse_args(argv)
    args.size = "small"
    if args.smoke:
        args.prompts, args.samples, args.cases, args.repeats, args.size = 2, 2, ["8:8:2"], 1, "tiny"
    args.cases = [tuple(int(x) for x in case.split(":")) for case in args.cases]
    return args


def config(args, prompt_len, new, micro_batches, share):
    import bench_train  # scripts/ is on sys.path when run as a script

    cfg = bench_train.train_config(args.size, args.variant)
    return dataclasses.replace(
        cfg, prompts_per_step=args.prompts, micro_batches=micro_batches,
        data=dataclasses.replace(cfg.data, max_prompt_length=prompt_len, synthetic_max_len=prompt_len),
        rollout=dataclasses.replace(cfg.rollout, samples_per_prompt=args.samples, max_new_tokens=new,
                                    share_prompt=share))


def samples(prompt_ids, prompt_mask, n, new, vocab, seed):
    """A rollout's output with every response at full length (random tokens): fixed work for both settings."""
    from tipjax import sampling

    rows = prompt_ids.shape[0] * n
    resp = np.random.default_rng(seed).integers(3, vocab, (rows, new))
    tokens = jnp.concatenate([jnp.repeat(prompt_ids, n, axis=0), jnp.asarray(resp, prompt_ids.dtype)], axis=1)
    mask = jnp.concatenate([jnp.zeros((rows, prompt_ids.shape[1]), jnp.int32), jnp.ones((rows, new), jnp.int32)], 1)
    return sampling.SampleOutput(tokens=tokens, response_mask=mask, logprobs=jnp.zeros(mask.shape, jnp.float32),
                                 lengths=jnp.full((rows,), new, jnp.int32), truncated=jnp.ones((rows,), bool))


def run_case(args, prompt_len, new, micro_batches):
    from tipjax import step as step_lib
    from tipjax import train
    from tipjax.prompt_source import SyntheticPrompts

    calls, temp, losses, shares = {}, {}, {}, {}
    for share in (True, False):
        cfg = config(args, prompt_len, new, micro_batches, share)
        s = train.setup(cfg)
        state = s.init_fn(s.student, jax.random.PRNGKey(0))
        batch = next(SyntheticPrompts(cfg.data, cfg.prompts_per_step, 256))
        ids, mask = jnp.asarray(batch["prompt_ids"]), jnp.asarray(batch["prompt_mask"])
        out = samples(ids, mask, args.samples, new, s.student.config.vocab_size, prompt_len + new)
        update = jax.jit(step_lib.build_update(s.settings, s.optimization.optimizer, s.optimization.schedule))
        operands = (state, s.teacher, ids, mask, out)
        temp[share] = update.lower(*operands).compile().memory_analysis().temp_size_in_bytes / 2**20
        shares[share] = step_lib.update_shares_prompts(s.settings, args.prompts)
        _, metrics = jax.block_until_ready(update(*operands))
        losses[share] = float(metrics["loss"])
        calls[share] = (update, operands)
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for share in (True, False):
            fn, operands = calls[share]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*operands))
            times[share].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(prompt_len=prompt_len, new_tokens=new, micro_batches=micro_batches, shared_s=med[True],
                per_row_s=med[False], speedup=med[False] / med[True], temp_mib_shared=temp[True],
                temp_mib_per_row=temp[False], loss_shared=losses[True], loss_per_row=losses[False],
                shared_applies=shares[True], times_shared=times[True], times_per_row=times[False])


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "scripts"))
    rows = []
    print("| prompt | response | micro-batches | prompts once s | per row s | speed-up | temp MiB once / per row | "
          "loss once / per row |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        r = run_case(args, *case)
        assert r["shared_applies"], f"case {case}: the update does not share prompts"
        rows.append(r)
        print(f"| {r['prompt_len']} | {r['new_tokens']} | {r['micro_batches']} | {r['shared_s']:.3f} | "
              f"{r['per_row_s']:.3f} | {r['speedup']:.2f}x | {r['temp_mib_shared']:.0f} / {r['temp_mib_per_row']:.0f} | "
              f"{r['loss_shared']:.5f} / {r['loss_per_row']:.5f} |", flush=True)
    if not args.smoke:
        result = dict(command=" ".join(["python scripts/bench_shared_update.py", *(argv or sys.argv[1:])]),
                      machine=f"{jax.devices()[0].device_kind}, jax {jax.__version__}", prompts=args.prompts,
                      samples=args.samples, variant=args.variant, size=args.size, rows=rows)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
