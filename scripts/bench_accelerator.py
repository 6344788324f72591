"""tipjax on one accelerator: decode, forward and the OPD step, against a baseline measured in the same run.

    python scripts/bench_accelerator.py OUT_DIR [--smoke] [--baseline DIR] [--budget SECONDS] [--only ROWS]
    python scripts/bench_accelerator.py --render OUT_DIR/bench_accelerator.json [--write-docs]

Rows (the shapes of ../shared/tools/accel_probe.py, so numbers compare with its table):
  ceilings   device-to-device copy bandwidth and a bf16 8192^3 matmul: the two roofs every share below uses
  decode     sampling.generate ms per decode step, Qwen3-0.6B bf16, prompt 128, 512 new, batch 8 and 64, per
             decode variant (attention kernel, tokens per loop iteration); share of the HBM bound = (weights +
             mean filled KV window, read once per step) / measured copy bandwidth; sampler compile seconds
  forward    hidden + head, Qwen3-0.6B bf16, 4 x 2048, per attention backend, and transformers (torch) as baseline
  train      the compiled OPD step, Qwen3-1.7B teacher -> Qwen3-0.6B student (random weights, fp32 master, bf16
             compute, remat full), 8 prompts x 8 samples, prompt 256, 1024 new, micro_batches 4, all-token:
             compile s, step s, rollout-alone s, update s and update TFLOP/s
Each measurement runs in its own process (a crash or an XLA flag stays there). `--baseline DIR` is another
tipjax checkout (e.g. `git archive <commit> | tar -x -C DIR`): its rows run with DIR on PYTHONPATH. Sections
are skipped once `--budget` seconds are spent; `--only` takes sections or row labels, separated by ";".
`--smoke` runs tiny shapes on CPU (a dry run of the script).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_FLAGS = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # torch shares the card in the forward rows
# Extra XLA flags tried on the decode loop (each run in its own process).
COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
# Run B's decode HLO split the o_proj and down-proj matmuls over K (a GEMM plus a reduction kernel each): in a
# launch-bound step, fewer kernels may beat the autotuner's per-kernel choice.
NO_SPLIT_K = "--xla_gpu_experimental_force_split_k=1"
# XLA:GPU captures only runs of at least this many kernels into a CUDA graph; a decode step is ~500 small ones.
MIN_GRAPH_1 = "--xla_gpu_graph_min_graph_size=1"
# Triton GEMMs only (no cuBLAS): XLA can fuse elementwise producers (the SwiGLU before the down projection) into a
# Triton GEMM, one kernel fewer per layer in a launch-bound step; cuBLAS takes no such prologue.
TRITON_GEMMS = "--xla_gpu_cublas_fallback=false"
NO_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer="


# ----------------------------------------------------------------------------------------------------------
# Workers: each runs in a subprocess and prints one "RESULT {json}" line.

def _presets(smoke: bool):
    from tipjax import models
    student, teacher = models.PRESETS["Qwen3-0.6B"], models.PRESETS["Qwen3-1.7B"]
    if smoke:
        small = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=32)
        student, teacher = student.replace(**small), teacher.replace(**{**small, "hidden_size": 96, "num_layers": 3})
    return student, teacher


def _body_params(cfg) -> int:
    """Matmul parameters per token of the decoder body (no embedding, no head)."""
    d, f, n, k, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return cfg.num_layers * (d * n * h * 2 + d * k * h * 2 + 3 * d * f)


def _median_time(fn, repeats: int) -> float:
    import numpy as np
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def worker_ceilings(args, smoke):
    import jax
    import jax.numpy as jnp
    n = (1 << 20) if smoke else (1 << 30)  # bf16 elements: 2 GiB
    x = jax.random.normal(jax.random.key(0), (n,), jnp.bfloat16)
    copy = jax.jit(lambda a: a * jnp.asarray(1.0001, a.dtype))
    jax.block_until_ready(copy(x))
    t = _median_time(lambda: jax.block_until_ready(copy(x)), 10)
    m = 512 if smoke else 8192
    a = jax.random.normal(jax.random.key(1), (m, m), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(2), (m, m), jnp.bfloat16)
    mm = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(mm(a, b))
    tm = _median_time(lambda: jax.block_until_ready(mm(a, b)), 10)
    return dict(copy_bytes_per_s=4 * n / t, matmul_tflops=2 * m**3 / tm / 1e12)


def worker_decode(args, smoke):
    """ms per decode step for each variant in args["variants"] (generate kwargs + model config changes)."""
    import jax
    from tipjax import models

    s_cfg, _ = _presets(smoke)
    tp, new = (8, 16) if smoke else (128, 512)
    rows = []
    for variant in args["variants"]:
        _set_tilings(variant)
        model_changes = variant.get("model", {})
        cfg = s_cfg.replace(param_dtype="bfloat16", compute_dtype="bfloat16", **model_changes)
        model = models.init(cfg, jax.random.PRNGKey(0))
        try:
            _decode_rows(model, cfg, variant, tp, new, smoke, rows)
        except Exception as err:  # one variant failing (a kernel that does not lower) leaves the others
            rows.append(dict(variant=variant["name"], error=repr(err)[-1500:]))
            print(rows[-1], flush=True)
        del model
    return dict(rows=rows, prompt=tp, new=new)


def _set_tilings(args: dict) -> None:
    """The decode kernel's launch settings (16-bit and float8 caches), for this worker process only."""
    from tipjax.models import decode_kernel
    if args.get("tiling"):
        decode_kernel.DEFAULT = decode_kernel.Tiling(*args["tiling"])
    if args.get("tiling_float8"):
        decode_kernel.DEFAULT_FLOAT8 = decode_kernel.Tiling(*args["tiling_float8"])


def _decode_rows(model, cfg, variant, tp, new, smoke, rows):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tipjax import sampling

    samples = variant.get("samples", 1)  # rows per prompt: b rows are b / samples prompts' samples
    generate = dict(variant.get("generate", {}), **({"num_samples": samples} if samples > 1 else {}))
    for b in variant.get("batches", (2, 4) if smoke else (8, 64)):
        ids = jnp.asarray(np.random.default_rng(0).integers(3, min(cfg.vocab_size, 50000), (b // samples, tp)),
                          jnp.int32)
        mask = jnp.ones_like(ids)

        def run():
            out = sampling.generate(model, ids, mask, max_new_tokens=new, temperature=1.0, top_p=1.0, top_k=0,
                                    eos_token_id=None, rng=jax.random.PRNGKey(1), **generate)
            return jax.block_until_ready(out.tokens)

        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        seconds = _median_time(run, 3)
        cache_bytes = jnp.dtype(variant.get("generate", {}).get("cache_dtype") or cfg.compute_dtype).itemsize
        prompt_copies = b // samples if samples > 1 and generate.get("share_prompt", True) else b  # read per step
        kv_bytes = ((b * new / 2 + prompt_copies * tp) * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
                    * cache_bytes)
        weight_bytes = 2 * (_body_params(cfg) + cfg.hidden_size * cfg.vocab_size)
        rows.append(dict(variant=variant["name"], batch=b, ms_per_step=seconds / new * 1e3,
                         compile_s=first - seconds, bytes_per_step=weight_bytes + kv_bytes))
        if variant.get("profile"):
            rows[-1].update(_decode_profile(run, Path(variant["profile"]) / f"b{b}", new))
        print(rows[-1], flush=True)


def _decode_profile(run, log_dir, new) -> dict:
    """One more call under jax.profiler: kernels and kernel time per decode step, and the share of the call's
    kernel span the device was busy (low: the step is bound by launches, not by the kernels)."""
    got = _profiled(run, log_dir, top=8)
    if "profile_error" in got:
        return got
    p = got["profile"]
    return dict(kernels_per_step=p["kernels"] / new, kernel_ms_per_step=p["total_ms"] / new,
                busy_share=p["total_ms"] / max(p["span_ms"], 1e-9),
                top_kernels=[dict(k, ms=k["ms"] / new, count=k["count"] / new) for k in p["top_kernels"]])


def _profiled(run, log_dir, hlo_text: str = "", top: int = 30) -> dict:
    """{"profile": profile_summary of one run()} or {"profile_error": ...}: a profiler failure must not cost the
    row's timings."""
    import profile_summary
    try:
        return dict(profile=profile_summary.profile(run, log_dir, hlo_text, top))
    except Exception as e:  # noqa: BLE001
        return dict(profile_error=f"{type(e).__name__}: {e}"[-500:])


def worker_forward(args, smoke):
    """Forward (hidden + head) per attention backend; args["hf"] adds transformers' forward."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tipjax import models

    s_cfg, _ = _presets(smoke)
    b, t = (2, 32) if smoke else (4, 2048)
    ids = np.random.default_rng(0).integers(3, 500, (b, t)).astype(np.int32)
    flops = 2 * (_body_params(s_cfg) + s_cfg.hidden_size * s_cfg.vocab_size) * b * t
    rows = []
    for backend in args.get("backends", ["auto"]):
        changes = {} if backend is None else dict(attention=backend)
        cfg = s_cfg.replace(param_dtype="bfloat16", compute_dtype="bfloat16", **changes)
        model = models.init(cfg, jax.random.PRNGKey(0))
        f = jax.jit(lambda m, x: m.logits(m.hidden(x)).astype(jnp.bfloat16))
        x = jnp.asarray(ids)
        jax.block_until_ready(f(model, x))
        seconds = _median_time(lambda: jax.block_until_ready(f(model, x)), 10)
        rows.append(dict(variant=f"tipjax attention={backend}", ms=seconds * 1e3, tflops=flops / seconds / 1e12))
        print(rows[-1], flush=True)
        del model
    if args.get("hf"):
        import torch
        import transformers
        hf_cfg = transformers.Qwen3Config(**{k: v for k, v in s_cfg.to_hf_dict().items()
                                             if k not in ("architectures", "model_type", "torch_dtype", "dtype")})
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):
            m = transformers.Qwen3ForCausalLM(hf_cfg).to(torch.bfloat16).eval()
        tid = torch.from_numpy(ids).long().to(device)

        def hf():
            with torch.no_grad():
                m(input_ids=tid).logits
            if device == "cuda":
                torch.cuda.synchronize()

        hf()
        seconds = _median_time(hf, 10)
        rows.append(dict(variant=f"transformers {transformers.__version__} ({m.config._attn_implementation})",
                         ms=seconds * 1e3, tflops=flops / seconds / 1e12))
        print(rows[-1], flush=True)
    return dict(rows=rows, batch=b, seq=t)


def worker_train(args, smoke):
    """The OPD step at the probe's shapes; args: student/teacher model changes, rule, timed steps."""
    import jax
    import numpy as np
    from tipjax import build, models, step as step_lib
    from tipjax.config_schema import OptimSpec, RolloutSpec, SelectionSpec

    p, n, tp, new = (2, 4, 16, 32) if smoke else (8, 8, 256, 1024)  # smoke: 2 copies of a prompt per 2 samples
    _set_tilings(args)
    s_cfg, t_cfg = _presets(smoke)
    s_cfg = s_cfg.replace(**{"param_dtype": "float32", "compute_dtype": "bfloat16", "remat": "full",
                             **args.get("student", {})})
    t_cfg = t_cfg.replace(**{"param_dtype": "bfloat16", "compute_dtype": "bfloat16", "remat": "full",
                             **args.get("teacher", {})})
    mesh = models.make_mesh()
    t0 = time.perf_counter()
    student = models.init(s_cfg, jax.random.PRNGKey(0), mesh=mesh)
    teacher = models.init(t_cfg, jax.random.PRNGKey(1), mesh=mesh)
    opt = build.Optimization(OptimSpec(), 1000, student, mesh)
    settings = step_lib.StepSettings(
        rollout=RolloutSpec(samples_per_prompt=n, max_new_tokens=new, **args.get("rollout_spec", {})),
        selection=SelectionSpec(rule=args.get("rule", "all")),
        eos_ids=(), vocab=s_cfg.vocab_size, micro_batches=4, param_shardings=opt.state_shardings.model,
        split_sharding=build.split_sharding(mesh))
    batch = models.batch_sharding(mesh)
    state = opt.init_fn(student, jax.random.PRNGKey(2))
    del student
    ids = jax.device_put(np.random.default_rng(0).integers(3, min(s_cfg.vocab_size, 50000), (p, tp)).astype(np.int32),
                         batch)
    mask = jax.device_put(np.ones((p, tp), np.int32), batch)
    shardings = (opt.state_shardings, models.model_shardings(teacher, mesh), batch, batch)
    inputs = (state, teacher, ids, mask)
    alone = args.get("update_alone", False)
    if alone:  # steps 2-5 on one rollout's samples: timed and profiled without 1024 decode steps
        samples = jax.jit(functools.partial(step_lib.rollout_samples, settings))(state, ids, mask)
        program = step_lib.build_update(settings, opt.optimizer, opt.schedule)
        inputs, shardings = inputs + (samples,), shardings + (None,)
    else:
        program = step_lib.build_step(settings, opt.optimizer, opt.schedule)
    step_fn = jax.jit(program, in_shardings=shardings, out_shardings=(opt.state_shardings, None), donate_argnums=(0,))
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = step_fn.lower(*inputs).compile()
    compile_s = time.perf_counter() - t0
    temp_gib = compiled.memory_analysis().temp_size_in_bytes / 2**30
    steps = []
    for _ in range(args.get("steps", 3)):
        t = time.perf_counter()
        state, metrics = compiled(state, *inputs[1:])
        jax.block_until_ready(metrics)
        steps.append(time.perf_counter() - t)
    step_s = float(np.median(steps[1:])) if len(steps) > 1 else steps[0]
    from tipjax.models import decode_kernel
    out = dict(tilings=[list(dataclasses.astuple(t)) for t in (decode_kernel.DEFAULT, decode_kernel.DEFAULT_FLOAT8)],
               setup_s=setup_s, compile_s=compile_s, steps_s=steps, step_s=step_s, temp_gib=temp_gib,
               loss=float(metrics["loss"]), response_tokens=float(metrics["response_tokens"]))
    roll_s, update_s = None, step_s  # the update alone: its steps are updates
    if not alone and args.get("rollout", True):
        rollout = jax.jit(step_lib.build_rollout(settings))
        jax.block_until_ready(rollout(state, ids, mask))
        roll_s = _median_time(lambda: jax.block_until_ready(rollout(state, ids, mask)), 2)
        update_s = max(step_s - roll_s, 1e-9)
    if alone or args.get("rollout", True):
        rows_b, seq = p * n, tp + new
        head = 2 * rows_b * new * (3 * s_cfg.hidden_size + t_cfg.hidden_size) * s_cfg.vocab_size
        # accel_probe's count (remat full: student 2 forward + 2 recompute + 4 backward = 8 per param and
        # token, teacher 2) and the model FLOPs of MFU (student 6, teacher 2: recompute not counted).
        probe_flops = (2 * _body_params(t_cfg) + 8 * _body_params(s_cfg)) * rows_b * seq + head
        model_flops = (2 * _body_params(t_cfg) + 6 * _body_params(s_cfg)) * rows_b * seq + head
        # Model FLOPs count every row's whole sequence (the yardstick); an update that runs c copies of
        # each prompt for its samples (step.prompt_copies) executes P * c * tp + B * new tokens' worth of them.
        copies = step_lib.prompt_copies(settings, p)
        shared = copies < n
        run = p * copies * tp + rows_b * new
        executed = (2 * _body_params(t_cfg) + 6 * _body_params(s_cfg)) * run + head
        out.update(rollout_s=roll_s, update_s=update_s, update_tflops_probe=probe_flops / update_s / 1e12,
                   update_model_tflops=model_flops / update_s / 1e12, update_shares_prompts=shared,
                   update_executed_tflops=executed / update_s / 1e12)
    if args.get("profile"):  # one more step under the profiler: device time by scope (the trace is not kept)
        out.update(_profiled(lambda: jax.block_until_ready(compiled(state, *inputs[1:])[1]),
                             Path(args["profile"]), compiled.as_text()))
    print(out, flush=True)
    return out


def worker_hlo(args, smoke):
    """The compiled sampler (Qwen3-0.6B widths, 4 layers, batch 8, prompt 128, 64 new in 2 segments): what its
    decode loops write at cache size besides the in-place update (copies, materialised window slices), the
    kernels per decode step and the while loops."""
    import re

    import jax
    import jax.numpy as jnp
    import hlo_loops
    from tipjax import models, sampling

    s_cfg, _ = _presets(smoke)
    cfg = s_cfg.replace(param_dtype="bfloat16", compute_dtype="bfloat16", num_layers=min(4, s_cfg.num_layers),
                        **args.get("model", {}))
    batch, prompt, new = 8, 128, 64
    ids = jax.ShapeDtypeStruct((batch, prompt), jnp.int32)
    settings = sampling.DecodeSettings(prompt_len=prompt, max_new_tokens=new, temperature=1.0, top_k=0, top_p=1.0,
                                       eos_ids=(), pad_id=0, segments=2, steps_per_loop=8)
    text = sampling._jit_generate.trace(models.abstract(cfg), ids, ids, jax.eval_shape(lambda: jax.random.key(0)),
                                        settings=settings, cache_dtype=None).lower().compile().as_text()
    Path(args["out"]).write_text(text)
    carried = f"s32[{batch},{prompt + new}]"  # the sampler's tokens: marks the decode loops
    shape = dict(batch=batch, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, min_slots=prompt)
    top = hlo_loops.top_level_lines(text, carried)
    kernels = [line for line in top if re.search(r" (fusion|custom-call|while|conditional|dot)\(", line)]
    return dict(cache_copies=hlo_loops.cache_writes(hlo_loops.loop_lines(text, carried), ops=("copy",), **shape),
                cache_writes=hlo_loops.cache_writes(top, **shape), decode_kernels=len(kernels),
                layers=cfg.num_layers, steps_per_loop=settings.steps_per_loop,
                while_loops=len(re.findall(r" while\(", text)), instructions=len(re.findall(r"^\s+\S+ = ", text, re.M)))


def worker_kernel(args, smoke):
    """The attention half of a decode layer alone: the Pallas kernel's tilings vs the xla path."""
    import bench_decode_kernel
    return bench_decode_kernel.run(smoke)


WORKERS = {"hlo": worker_hlo, "ceilings": worker_ceilings, "decode": worker_decode, "forward": worker_forward,
           "train": worker_train, "kernel": worker_kernel}


def worker_main(name: str, args: dict, smoke: bool) -> None:
    if smoke:
        import jax
        jax.config.update("jax_platforms", "cpu")
    import jax
    env = dict(jax=jax.__version__, backend=jax.default_backend(), device=jax.devices()[0].device_kind)
    result = WORKERS[name](args, smoke)
    print("RESULT " + json.dumps(dict(env=env, **result)), flush=True)


# ----------------------------------------------------------------------------------------------------------
# The plan: (section, label, worker, args, code, extra env, seconds it may need on one H100/H200)

def plan():
    """In order of importance: a run stops starting rows once its budget is spent."""
    xla = dict(decode_attention="xla")
    return [
        ("ceilings", "ceilings", "ceilings", {}, "new", {}, 10),
        # The attention half alone, per tiling, over bf16 and float8 caches: its fastest tilings at batch 64 (the
        # rollout's) are what the "BEST:" rows below run (run_plan fills them in).
        ("kernel", "decode attention kernel", "kernel", {}, "new", {}, 80),
        # The step's 8 samples per prompt read one shared copy of the prompt's keys in the rollout and run the
        # prompt once in the update (rollout.share_prompt, new since run I: not measured on a GPU yet); the same
        # step with a copy per row in both, for the ratio.
        ("train", "train new", "train", dict(steps=2), "new", {}, 110),
        ("train", "train new, prompts not shared", "train", dict(steps=2, rollout_spec=dict(share_prompt=False)),
         "new", {}, 110),
        # Where the update's 1.6 s go: the update alone (step.build_update on one rollout's samples), timed
        # directly (runs C-I took step minus rollout) and profiled without decode kernels; early, as the profile
        # row was past run I's budget.
        ("train", "update new alone, profiled, command buffers off", "train",
         dict(steps=3, update_alone=True, profile="OUT/profile"), "new", {"XLA_FLAGS": NO_COMMAND_BUFFERS}, 90),
        # "auto" decodes with tipjax's Pallas kernel on CUDA (runs G, I: faster than xla at batch 8 and 64).
        ("decode", "decode new", "decode", dict(variants=[dict(name="defaults (auto: the Pallas kernel on CUDA)")]),
         "new", {}, 60),
        # Shared prompt keys in decode alone: batch 64 as 8 prompts x 8 samples, shared (the bound counts each
        # prompt read once: HBM once, L2 for the other 7) and with a copy per row.
        ("decode", "decode new, 8 samples per prompt", "decode",
         dict(variants=[dict(name="8 samples per prompt, shared prompt keys", samples=8, batches=[64]),
                        dict(name="8 samples per prompt, a copy per row", samples=8, batches=[64],
                             generate=dict(share_prompt=False))]), "new", {}, 50),
        # The way under 4 s: 5.6 of a rollout step's 7 GB at batch 64 are KV, a float8 cache halves them (run I:
        # the kernel over float8, DEFAULT_FLOAT8, took the step to 4.00-4.10 s).
        ("decode", "decode new, kernel over float8, best tiling", "decode",
         dict(variants=[dict(name="the kernel over a float8_e4m3fn cache, the kernel row's best tiling",
                             generate=dict(cache_dtype="float8_e4m3fn"), tiling_float8="BEST:float8_e4m3fn")]),
         "new", {}, 50),
        ("train", "train new, kernel over float8, best tiling", "train",
         dict(steps=3, rollout_spec=dict(kv_cache_dtype="float8_e4m3fn"), tiling_float8="BEST:float8_e4m3fn"),
         "new", {}, 110),
        # Batch 8's step is mostly M = 8 GEMMs (run I's profile): Triton GEMMs may fuse more or tile them better.
        ("decode", "decode new, Triton GEMMs only", "decode",
         dict(variants=[dict(name="auto, --xla_gpu_cublas_fallback=false")]), "new", {"XLA_FLAGS": TRITON_GEMMS}, 60),
        ("decode", "decode new, float8 KV cache", "decode",
         dict(variants=[dict(name="auto (the kernel, DEFAULT_FLOAT8), float8_e4m3fn cache",
                             generate=dict(cache_dtype="float8_e4m3fn"))]), "new", {}, 50),
        ("decode", "decode new, kernel best bf16 tiling", "decode",
         dict(variants=[dict(name="the kernel, the kernel row's best bf16 tiling", tiling="BEST:bfloat16")]),
         "new", {}, 45),
        # Where a decode step goes. Profiled rows run without command buffers: the profiler does not see the
        # kernels of a CUDA graph one by one (run D: 63 of 353 kernels per decode step), so their timings are the
        # no-graph ones.
        ("decode", "decode new, profiled, command buffers off", "decode",
         dict(variants=[dict(name="defaults, profiled", batches=[8, 64], profile="OUT/decode_profile")]), "new",
         {"XLA_FLAGS": NO_COMMAND_BUFFERS}, 50),
        ("decode", "decode new, xla", "decode",
         dict(variants=[dict(name="xla attention, 8 tokens/iteration", model=xla)]), "new", {}, 60),
        ("train", "train new, xla decode in the rollout", "train", dict(steps=2, student=xla), "new", {}, 100),
        ("train", "train new, float8 KV cache, xla", "train",
         dict(steps=2, student=xla, rollout_spec=dict(kv_cache_dtype="float8_e4m3fn")), "new", {}, 100),
        ("hlo", "decode HLO", "hlo", dict(out="OUT/decode_hlo.txt"), "new", {}, 20),
        ("hlo", "decode HLO, xla", "hlo", dict(out="OUT/decode_hlo_xla.txt", model=xla), "new", {}, 20),
        ("decode", "decode new b64, xla, profiled, command buffers off", "decode",
         dict(variants=[dict(name="xla, profiled", batches=[64], profile="OUT/decode_profile_xla", model=xla)]),
         "new", {"XLA_FLAGS": NO_COMMAND_BUFFERS}, 35),
        ("decode", "decode new b64, graphs from 1 kernel", "decode",
         dict(variants=[dict(name="xla, --xla_gpu_graph_min_graph_size=1", batches=[64], model=xla)]), "new",
         {"XLA_FLAGS": MIN_GRAPH_1}, 30),
        ("decode", "decode baseline", "decode", dict(variants=[dict(name="baseline")]), "baseline", {}, 45),
        ("train", "train new, remat dots", "train",
         dict(steps=3, student=dict(remat="dots"), teacher=dict(remat="none")), "new", {}, 100),
        ("decode", "decode new, no split-K", "decode",
         dict(variants=[dict(name="xla, split-K forced to 1", model=xla)]), "new", {"XLA_FLAGS": NO_SPLIT_K}, 45),
        ("decode", "decode new + command buffers", "decode",
         dict(variants=[dict(name="xla + WHILE/CONDITIONAL command buffers", model=xla)]), "new",
         {"XLA_FLAGS": COMMAND_BUFFERS}, 45),
        ("train", "train baseline", "train", dict(steps=2, rollout=False), "baseline", {}, 75),
        ("decode", "decode new, 1 token/iteration", "decode",
         dict(variants=[dict(name="xla, 1 token/iteration", generate=dict(steps_per_loop=1), model=xla)]), "new",
         {}, 45),
        # Measured and met in earlier runs (docs/performance.md): last.
        ("forward", "forward new + transformers", "forward", dict(backends=["auto", "xla"], hf=True), "new", {}, 45),
        ("forward", "forward baseline", "forward", dict(backends=[None]), "baseline", {}, 25),
    ]


def _best_tilings(args, runs):
    """"BEST:<cache dtype>" in a row's args -> the fastest kernel tiling at batch 64 for that cache in this run's
    kernel row (the default tiling if the row did not run)."""
    rows = [r for run in runs if run.get("section") == "kernel" for r in run.get("rows", [])]

    def best(cache):
        timed = [r for r in rows if r.get("cache") == cache and r.get("tiling") and "us_per_call" in r]
        if not timed:
            return None
        widest = max(r["batch"] for r in timed)
        return min((r for r in timed if r["batch"] == widest), key=lambda r: r["us_per_call"])["tiling"]

    def fill(x):
        if isinstance(x, dict):
            return {k: fill(v) for k, v in x.items()}
        if isinstance(x, list):
            return [fill(v) for v in x]
        return best(x[len("BEST:"):]) if isinstance(x, str) and x.startswith("BEST:") else x
    return fill(args)


def _tiling_args(args) -> dict:
    """The tiling settings anywhere in a row's args: {"tiling" / "tiling_float8": value}."""
    found = {}
    for key, value in (args.items() if isinstance(args, dict) else ()):
        if key in ("tiling", "tiling_float8"):
            found[key] = value
        elif isinstance(value, (dict, list)):
            for item in (value if isinstance(value, list) else [value]):
                found.update(_tiling_args(item))
    return found


def run_plan(out_dir: Path, smoke: bool, baseline: str | None, budget: float, only: list[str]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dict(smoke=smoke, date=time.strftime("%Y-%m-%d"), runs=[])
    start = time.perf_counter()
    for section, label, worker, args, code, env_extra, need in plan():
        if only and section not in only and label not in only:
            continue
        if code == "baseline" and not baseline:
            continue
        spent = time.perf_counter() - start
        if spent + (0 if smoke else need) > budget:
            results["runs"].append(dict(section=section, label=label, skipped=f"budget ({spent:.0f} s spent)"))
            continue
        env = dict(os.environ, **ENV_FLAGS, **env_extra)
        paths = [baseline if code == "baseline" else str(ROOT), str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        args = json.loads(json.dumps(args).replace('"OUT/', json.dumps(str(out_dir) + "/")[:-1]))
        resolved = _best_tilings(args, results["runs"])
        picked = {k: v for k, v in _tiling_args(resolved).items() if v != _tiling_args(args).get(k)}
        args = resolved
        cmd = [sys.executable, __file__, "--worker", worker, "--args", json.dumps(args)]
        cmd += ["--smoke"] if smoke else []
        print(f"=== {label}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(60, budget - spent + 60))
        run = dict(section=section, label=label, code=code, env_extra=env_extra, wall_s=time.perf_counter() - t0,
                   **({"tilings_picked": picked} if picked else {}))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode == 0 and lines:
            run.update(json.loads(lines[-1][len("RESULT "):]))
        else:
            run["error"] = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()
            print(run["error"][-1500:], flush=True)
        results["runs"].append(run)
        (out_dir / "bench_accelerator.json").write_text(json.dumps(results, indent=1))
        print(json.dumps({k: v for k, v in run.items() if k != "error"})[:1500], flush=True)
    results["total_s"] = time.perf_counter() - start
    (out_dir / "bench_accelerator.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--baseline")
    # 6 minutes by default (the "one run of <= 6 minutes"): the rows that matter most come first.
    p.add_argument("--budget", type=float, default=360.0)
    p.add_argument("--only", default="")
    p.add_argument("--worker")
    p.add_argument("--args", default="{}")
    p.add_argument("--render")
    p.add_argument("--write-docs", action="store_true")
    a = p.parse_args(argv)
    if a.worker:
        return worker_main(a.worker, json.loads(a.args), a.smoke)
    import bench_accelerator_docs  # scripts/ is on sys.path when run as a script
    if a.render:
        results = json.loads(Path(a.render).read_text())
    else:
        if not a.out:
            p.error("OUT_DIR is required")
        only = [s.strip() for s in a.only.split(";") if s.strip()]
        results = run_plan(Path(a.out), a.smoke, a.baseline, a.budget, only)
    table = bench_accelerator_docs.render(results)
    print(table)
    if a.write_docs:
        bench_accelerator_docs.write(table, ROOT / "docs" / "performance.md")


if __name__ == "__main__":
    main()
