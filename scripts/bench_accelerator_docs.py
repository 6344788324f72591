"""Renders bench_accelerator.json as markdown and writes it as the `## Accelerator` section of docs/performance.md."""

from __future__ import annotations

import re
from pathlib import Path

PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, the datasheet figure MFU is quoted against


def _runs(results, section):
    return [r for r in results["runs"] if r.get("section") == section and "error" not in r and "skipped" not in r]


def _label(run) -> str:
    """A row's label, with the kernel tilings its "BEST:" args resolved to in the run."""
    picked = run.get("tilings_picked") or {}
    names = {"tiling": "16-bit", "tiling_float8": "float8"}
    parts = [f"{names[k]}: block {t[0]}, {t[1]} warps, {t[2]} stages" + (f", {t[4]} operands" if t[4:5] and t[4] else "")
             + (", transposed" if t[5:6] and t[5] else "") for k, t in picked.items() if t]
    return run["label"] + (f" ({'; '.join(parts)})" if parts else "")


def _update_alone(row: dict) -> bool:
    """A train row that timed the update alone: it records its rollout time as None (older runs: no key)."""
    return "rollout_s" in row and row["rollout_s"] is None


def render(results: dict) -> str:
    env = next((r["env"] for r in results["runs"] if "env" in r), {})
    lines = ["## Accelerator", ""]
    lines.append(f"`python scripts/bench_accelerator.py OUT --baseline BASELINE_CHECKOUT` on {env.get('device', '?')} "
                 f"({env.get('backend', '?')}), jax {env.get('jax', '?')}, {results.get('date', '?')}"
                 f"{' (SMOKE: tiny shapes on CPU, not a measurement)' if results.get('smoke') else ''}. "
                 f"Every row ran in the same session; \"baseline\" is the tipjax checkout named in the text below.")
    lines.append("")
    ceil = next(iter(_runs(results, "ceilings")), None)
    copy_bw = ceil["copy_bytes_per_s"] if ceil else None
    if ceil:
        lines += [f"Ceilings measured in the run: copy {ceil['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write), "
                  f"bf16 matmul {ceil['matmul_tflops']:.0f} TFLOP/s.", ""]
    decode = [(_label(r), row) for r in _runs(results, "decode") for row in r["rows"]]
    if decode:
        lines += ["### Decode (Qwen3-0.6B bf16, prompt 128, 512 new tokens, `sampling.generate`)", "",
                  "| code | variant | batch | ms / step | HBM bound ms | share of bound | compile s |",
                  "|---|---|---|---|---|---|---|"]
        for label, row in decode:
            if "error" in row:
                lines.append(f"| {label} | {row['variant']} | failed: {row['error'][-200:]} | | | | |")
                continue
            bound = row["bytes_per_step"] / copy_bw * 1e3 if copy_bw else None
            share = f"{bound / row['ms_per_step']:.0%}" if bound else "-"
            lines.append(f"| {label} | {row['variant']} | {row['batch']} | {row['ms_per_step']:.3f} | "
                         f"{bound:.3f} | {share} | {row['compile_s']:.1f} |" if bound else
                         f"| {label} | {row['variant']} | {row['batch']} | {row['ms_per_step']:.3f} | - | - | "
                         f"{row['compile_s']:.1f} |")
        lines.append("")
    kernel = next(iter(_runs(results, "kernel")), None)
    if kernel:
        lines += [f"### The attention half of a decode layer alone ({kernel['kv_heads']} kv heads x {kernel['groups']} "
                  f"queries x {kernel['head_dim']}, bf16, {kernel['filled']} of {kernel['slots']} cache slots "
                  f"filled, {kernel['calls']} calls in one loop)", "",
                  "| cache | variant | batch | us / call | max abs diff vs xla | compile + first s |",
                  "|---|---|---|---|---|---|"]
        for row in kernel["rows"]:
            cache = row.get("cache", "bfloat16")  # runs F and G had bf16 caches only
            if "error" in row:
                lines.append(f"| {cache} | {row['variant']} | {row['batch']} | failed: {row['error'][-200:]} | | |")
                continue
            diff = f"{row['max_abs_diff_vs_xla']:.2e}" if "max_abs_diff_vs_xla" in row else row.get("check_error", "-")
            lines.append(f"| {cache} | {row['variant']} | {row['batch']} | {row['us_per_call']:.1f} | {diff} | "
                         f"{row['compile_and_first_s']:.1f} |")
        lines.append("")
    profiled_decode = [(label, row) for label, row in decode if "busy_share" in row]
    if profiled_decode:
        lines += ["Decode under jax.profiler (one more call): kernels and kernel time per step, and the share of the "
                  "kernels' span the device was busy.", "",
                  "| code | batch | kernels / step | kernel ms / step | ms / step | device busy | largest kernels / step |",
                  "|---|---|---|---|---|---|---|"]
        for label, row in profiled_decode:
            top = ", ".join(f"`{k['name'][:40]}` {k['ms'] * 1e3:.0f} µs" for k in row["top_kernels"][:4])
            lines.append(f"| {label} | {row['batch']} | {row['kernels_per_step']:.0f} | "
                         f"{row['kernel_ms_per_step']:.3f} | {row['ms_per_step']:.3f} | {row['busy_share']:.0%} | {top} |")
        lines.append("")
    forward = [row for r in _runs(results, "forward") for row in
               [dict(x, label=r["label"]) for x in r["rows"]]]
    if forward:
        hf = next((row["ms"] for row in forward if row["variant"].startswith("transformers")), None)
        lines += ["### Forward (hidden + head, Qwen3-0.6B bf16, 4 x 2048)", "",
                  "| code | variant | ms | TFLOP/s | speed vs transformers |", "|---|---|---|---|---|"]
        for row in forward:
            ratio = f"{hf / row['ms']:.2f}x" if hf else "-"
            lines.append(f"| {row['label']} | {row['variant']} | {row['ms']:.2f} | {row['tflops']:.0f} | {ratio} |")
        lines.append("")
    train = _runs(results, "train")
    if train:
        lines += ["### OPD step (Qwen3-1.7B -> Qwen3-0.6B, 8 prompts x 8 samples, prompt 256, 1024 new, "
                  "micro_batches 4, all tokens)", "",
                  "| code | compile s | step s | rollout s | update s | update TFLOP/s (probe count) | "
                  "update MFU (model FLOPs / 989) | executed TFLOP/s (prompts run once) | temp GiB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in train:
            roll = f"{r['rollout_s']:.2f}" if r.get("rollout_s") is not None else "-"  # None: the update alone
            upd = f"{r['update_s']:.2f}" if "update_s" in r else "-"
            tf = f"{r['update_tflops_probe']:.0f}" if "update_tflops_probe" in r else "-"
            mfu = f"{r['update_model_tflops'] / PEAK_BF16_TFLOPS:.0%}" if "update_model_tflops" in r else "-"
            # Runs before the update ran each prompt once for its samples recorded no executed count.
            ran = f"{r['update_executed_tflops']:.0f}" if r.get("update_shares_prompts") else "-"
            step = "-" if _update_alone(r) else f"{r['step_s']:.2f}"
            lines.append(f"| {_label(r)} | {r['compile_s']:.1f} | {step} | {roll} | {upd} | {tf} | {mfu} "
                         f"| {ran} | {r['temp_gib']:.1f} |")
        lines.append("")
    profiled = next((r for r in train if "profile" in r), None)
    if profiled:
        prof = profiled["profile"]
        total = prof["total_ms"] or 1.0
        what = "the update's" if _update_alone(profiled) else "one OPD step's"
        lines += [f"### Where {what} device time goes ({profiled['label']}, jax.profiler)", "",
                  f"{prof['kernels']} kernels, {prof['total_ms']:.0f} ms of kernel time"
                  + (f" in a span of {prof['span_ms']:.0f} ms " if prof.get("span_ms") else " ") +
                  f"({prof['unmatched_ms']:.0f} ms not traced back to a scope). By jax scope "
                  "(stage / part / direction / block sub-stage), largest first:", "",
                  "| stage | part | direction | block | ms | share |", "|---|---|---|---|---|---|"]
        for row in prof["by_scope"][:16]:
            lines.append(f"| {row['stage']} | {row['part']} | {row['direction']} | {row['block']} | "
                         f"{row['ms']:.1f} | {row['ms'] / total:.1%} |")
        lines += ["", "Largest kernels: " + ", ".join(
            f"`{k['name'][:60]}` {k['ms']:.0f} ms ({k['count']}x)" for k in prof["top_kernels"][:10]) + ".", ""]
    for hlo in (r for r in _runs(results, "hlo") if "cache_writes" in r):
        writes = ", ".join(f"`{w}`" for w in hlo["cache_writes"]) or "none"
        lines += [f"### Compiled decode loop: {hlo['label']} (Qwen3-0.6B widths, {hlo['layers']} layers, batch 8, "
                  "prompt 128, 64 new, 2 segments)",
                  "",
                  f"Kernels in the decode loop bodies: {hlo['decode_kernels']} for {hlo['layers']} layers "
                  f"({hlo['steps_per_loop']} tokens per iteration; the inner body runs once per token). Cache-sized "
                  f"buffers written per step besides the in-place key/value update: {writes}. Cache-sized copies: "
                  f"{len(hlo['cache_copies'])}. While loops: {hlo['while_loops']}.", ""]
    bad = [r for r in results["runs"] if "error" in r or "skipped" in r]
    for r in bad:
        why = r.get("skipped") or r["error"].strip().splitlines()[-1][:300]
        lines.append(f"- {r['label']}: {'skipped' if 'skipped' in r else 'failed'}: {why}")
    if bad:
        lines.append("")
    return "\n".join(lines)


def write(table: str, path: Path) -> None:
    """Replaces the `## Accelerator` section (up to the next `## `) or appends it."""
    text = path.read_text() if path.exists() else "# Performance\n"
    pattern = re.compile(r"^## Accelerator\n.*?(?=^## |\Z)", re.S | re.M)
    section = table.rstrip() + "\n\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)
