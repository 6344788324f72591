"""scripts/bench_accelerator.py: its CPU smoke mode runs end to end (worker processes, JSON, rendering), and the
docs tables render from the checked-in accelerator results."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_accelerator_docs  # noqa: E402


def _smoke(tmp_path, rows: str):
    """scripts/bench_accelerator.py --smoke over some rows of its plan: (its JSON, {section: run}, stdout)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_accelerator.py"), str(tmp_path), "--smoke",
                           "--only", rows], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "bench_accelerator.json").read_text())
    assert results["smoke"]
    return results, {r["section"]: r for r in results["runs"]}, proc.stdout


def test_smoke_kernel_rows_run_on_cpu(tmp_path):
    results, runs, stdout = _smoke(tmp_path, "ceilings;decode HLO;decode attention kernel")
    assert set(runs) == {"ceilings", "hlo", "kernel"}
    # The kernel row checks the kernel against the xla path (bf16: within rounding) besides timing both.
    kernel_rows = runs["kernel"]["rows"]
    assert len(kernel_rows) == 6 and all(r["us_per_call"] > 0 and r["max_abs_diff_vs_xla"] < 1e-2 for r in kernel_rows)
    assert [r["cache"] for r in kernel_rows] == ["bfloat16"] * 3 + ["float8_e4m3fn"] * 3
    assert [r["max_abs_diff_vs_xla"] for r in kernel_rows[::3]] == [0.0, 0.0]  # each cache's xla row: its reference
    assert "error" not in runs["ceilings"] and runs["ceilings"]["copy_bytes_per_s"] > 0
    assert runs["hlo"]["cache_copies"] == [] and runs["hlo"]["while_loops"] >= 1
    # The row's fields for the docs. (XLA:CPU fuses a window slice into its dot, so the slice guard is the jaxpr
    # test in test_decode_paths.py; here the writes listed are CPU's f32 converts of the bf16 cache.)
    assert isinstance(runs["hlo"]["cache_writes"], list) and runs["hlo"]["decode_kernels"] > 0
    assert "Ceilings measured in the run" in stdout and "### Compiled decode loop" in stdout
    assert "### The attention half of a decode layer alone" in stdout and "| float8_e4m3fn | kernel" in stdout


def test_smoke_step_rows_run_on_cpu(tmp_path):
    """The device session's first step rows: the whole step, and the update alone under the profiler."""
    results, _, stdout = _smoke(tmp_path, "train new;update new alone, profiled, command buffers off")
    train, alone = results["runs"]
    # The step's update runs prompts once (smoke: 2 prompts x 4 samples, 4 micro-batches, so 2 copies of each
    # prompt), and the executed FLOPs are fewer than the model's.
    assert train["label"] == "train new" and "error" not in train and train["step_s"] > 0
    assert train["update_shares_prompts"] and 0 < train["update_executed_tflops"] < train["update_model_tflops"]
    # The update alone, timed directly and profiled: its kernels are the teacher's and student's passes, none of a
    # rollout.
    assert "error" not in alone and alone["rollout_s"] is None and alone["update_s"] == alone["step_s"] > 0
    stages = {row["stage"] for row in alone["profile"]["by_scope"]}
    assert "grad" in stages and "rollout" not in stages, stages
    assert "### OPD step" in stdout and "### Where the update's device time goes" in stdout


def test_docs_render_from_checked_in_results(tmp_path):
    results = json.loads((ROOT / "docs" / "bench_accelerator.json").read_text())
    table = bench_accelerator_docs.render(results)
    decode = [r for r in results["runs"] if r["label"] == "decode new"][0]["rows"]
    assert f"| {decode[0]['ms_per_step']:.3f} |" in table and "### OPD step" in table
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Accelerator\nold\n\n## Later\nkept\n")
    bench_accelerator_docs.write(table, doc)
    text = doc.read_text()
    assert "old" not in text and "## Later\nkept" in text and text.count("## Accelerator") == 1


def test_best_rows_take_the_kernel_rows_fastest_tiling_at_the_largest_batch():
    """'BEST:<cache>' in a row's args becomes the kernel row's fastest tiling for that cache at its largest batch
    (the rollout's), not the fastest at any batch; without a kernel row it stays the default (None)."""
    import bench_accelerator

    rows = [dict(cache="float8_e4m3fn", batch=8, tiling=[32, 4, 2, 0, "", False], us_per_call=1.0),   # fastest at 8
            dict(cache="float8_e4m3fn", batch=64, tiling=[32, 4, 2, 0, "", False], us_per_call=90.0),
            dict(cache="float8_e4m3fn", batch=64, tiling=[128, 4, 3, 0, "float16", False], us_per_call=56.0),
            dict(cache="float8_e4m3fn", batch=64, tiling=None, us_per_call=50.0),   # the xla row: no tiling
            dict(cache="float8_e4m3fn", batch=64, tiling=[64, 4, 2, 0, "", True], error="rejected"),
            dict(cache="bfloat16", batch=64, tiling=[64, 4, 2, 0, "", False], us_per_call=70.0)]
    runs = [dict(section="kernel", rows=rows)]
    args = dict(steps=2, tiling_float8="BEST:float8_e4m3fn", variants=[dict(tiling="BEST:bfloat16")])
    got = bench_accelerator._best_tilings(args, runs)
    assert got == dict(steps=2, tiling_float8=[128, 4, 3, 0, "float16", False],
                       variants=[dict(tiling=[64, 4, 2, 0, "", False])])
    assert bench_accelerator._tiling_args(got) == dict(tiling_float8=[128, 4, 3, 0, "float16", False],
                                                       tiling=[64, 4, 2, 0, "", False])
    assert bench_accelerator._best_tilings(args, [])["tiling_float8"] is None
