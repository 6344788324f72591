"""The CPU-scale TIP study: OPD on the demo task with each token-selection rule of PAPER.md sections 6-7, x seeds.

    python scripts/study_tip.py                      # the study in docs/study.md (34 min on 2 CPU cores)
    python scripts/study_tip.py --smoke --out=DIR    # tiny models, 2 rules x 1 seed, 2 steps (the test)
    python scripts/study_tip.py --render_only        # rewrite docs/study.md and the plots from docs/study.json

Every run is `python -m tipjax.train --config=configs/demo.py:<variant>` through the trainer's Python API
(tipjax.train.train), on the demo's cached teacher and SFT student (configs/demo.py's prepare step builds them
on first use), with the overrides below: the same step budget for every rule; the seed sets the rollout
randomness (TrainConfig.seed) and the prompt order (data.seed). The student is evaluated on the demo's held-out
problems (greedy, as the demo) every --eval_every steps; the SFT student once, before the first run. Each rule's
step is AOT-compiled once first (tipjax.train.dry_run) for its XLA memory analysis; with JAX's persistent
compilation cache the training runs reuse that compilation. Finished runs are kept in --workdir and skipped
when the study is run again (delete the folder to start over).

Writes OUT/study.json (every number), OUT/study.md (table, claims, plots) and OUT/study/*.png. A block of
study.md between `<!-- notes -->` and `<!-- /notes -->` (the hand-written discussion) survives a rewrite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/demo.py"

# The 10 settings of the paper's comparisons (Tables 3-8) plus the random control; the list.
RULES = ("all", "entropy50", "entropy20", "soft_or50", "soft_or20", "soft_or_bottom50", "q3_10", "q3_20", "div50",
         "random50")
FAMILY = {"all": "all tokens", "entropy": "entropy sampling", "soft_or": "Soft-OR top-K", "soft_or_bottom":
          "Soft-OR bottom-K", "q3": "Q3-only", "div": "Div-only", "random": "random"}
STUDY = {"steps": 150, "eval_every": 50, "seeds": 3, "rules": RULES}       # what docs/study.md was made with
SMOKE = {"steps": 2, "eval_every": 2, "seeds": 1, "rules": ("all", "soft_or50")}
CURVES = ("loss", "rkl_all", "kept_fraction", "q1", "q2", "q3", "q4")
NOTES = re.compile(r"<!-- notes -->.*?<!-- /notes -->", re.S)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python scripts/study_tip.py", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny demo models, 2 rules x 1 seed, 2 steps (seconds)")
    p.add_argument("--out", default=None, help="folder for study.json, study.md and study/*.png (default docs/)")
    p.add_argument("--workdir", default=None, help="run folders and the compilation cache (default /tmp/...)")
    p.add_argument("--rules", default=None, help="comma-separated variants of paper_variants.VARIANTS")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="OPD steps per run (the same for every rule)")
    p.add_argument("--eval_every", type=int, default=None, help="held-out evaluation every N steps (divides steps)")
    p.add_argument("--eval_limit", type=int, default=0, help="evaluate on the first N held-out problems (0: all)")
    p.add_argument("--render_only", action="store_true", help="only rewrite study.md and the plots from study.json")
    args = p.parse_args(argv)
    base = SMOKE if args.smoke else STUDY
    args.rules = tuple(args.rules.split(",")) if args.rules else base["rules"]
    for key in ("steps", "eval_every", "seeds"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    if args.steps % args.eval_every:
        p.error("--eval_every must divide --steps (the last evaluation is the final accuracy)")
    args.out = Path(args.out) if args.out else ROOT / "docs"
    default_work = "/tmp/tipjax_study_smoke" if args.smoke else "/tmp/tipjax_study"
    args.workdir = Path(args.workdir or default_work)
    return args


# --- running ---------------------------------------------------------------------------------------------------

def spec(args, variant: str) -> str:
    return f"{CONFIG}:{'tiny,' if args.smoke else ''}{variant}"


def overrides(args, seed: int, *, at_start: bool) -> list[str]:
    o = [f"--config.total_steps={args.steps}", f"--config.seed={seed}", f"--config.data.seed={42 + seed}",
         f"--config.eval.every={args.eval_every}", f"--config.eval.at_start={at_start}",
         "--config.checkpoint.every=0", "--config.checkpoint.keep=1", "--config.checkpoint.async_save=False"]
    if args.eval_limit:
        o.append(f"--config.eval.limit={args.eval_limit}")
    return o


def read_rows(workdir: Path) -> list[dict]:
    from tipjax.metrics_log import read_metrics

    return read_metrics(workdir)


def accuracy_key(row: dict) -> str | None:
    keys = sorted(k for k in row if k.startswith("eval/") and k.endswith("/mean_at_n"))
    return keys[0] if keys else None


def summarise_run(rows: list[dict], total: int) -> dict:
    """The run's scalars from its metrics.jsonl rows (one per step; eval rows carry eval/<set>/mean_at_n)."""
    steps = [r for r in rows if r["step"] >= 1]
    evals = [(r["step"], r[k], r.get(k + "_se")) for r in rows if (k := accuracy_key(r))]
    final = [e for e in evals if e[0] == total]
    if not final or len(steps) < total:
        raise RuntimeError(f"run did not finish: {len(steps)} of {total} steps, final evaluation {bool(final)}")
    mean = lambda key: sum(r[key] for r in steps) / len(steps)  # noqa: E731
    return {
        "accuracy": final[0][1], "accuracy_se_problems": final[0][2],
        "eval_curve": [[s, a] for s, a, _ in evals if s >= 1],
        "kept_fraction": mean("kept_fraction"),
        "tokens_with_gradient": sum(r["n_kept"] for r in steps), "response_tokens": sum(r["n_response"] for r in steps),
        "step_seconds_total": sum(r["step_seconds"] for r in steps),
        "step_seconds_median": sorted(r["step_seconds"] for r in steps)[len(steps) // 2],
        "final_loss": steps[-1]["loss"], "final_rkl_all": steps[-1]["rkl_all"],
        "peak_memory_gib": max((r["peak_memory_gib"] for r in steps if "peak_memory_gib" in r), default=None),
        "curves": {k: [r.get(k) for r in steps] for k in CURVES},
    }


def run_study(args) -> dict:
    import jax

    args.workdir.mkdir(parents=True, exist_ok=True)
    # Seeds 2.. of a rule (and its dry run's twin, the training step) load the compiled step from here.
    jax.config.update("jax_compilation_cache_dir", str(args.workdir / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from tipjax import train
    from tipjax.paper_variants import VARIANTS

    unknown = [r for r in args.rules if r not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown rules {unknown}; known: {sorted(VARIANTS)}")
    t_study = time.perf_counter()
    runs, memory, before = [], {}, None
    for i, variant in enumerate(args.rules):
        for seed in range(args.seeds):
            first = i == 0 and seed == 0  # the SFT student's accuracy: step 0 of the first run
            cfg = train.load_train_config(spec(args, variant), overrides(args, seed, at_start=first))
            if seed == 0:
                cfg = train.prepare(cfg)  # builds the demo models on first use; a no-op when cached
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    report = train.dry_run(cfg)
                memory[variant] = {**report["per_device_gib"], "compile_s": time.perf_counter() - t0}
            workdir = args.workdir / "runs" / f"{variant}-s{seed}"
            done, key = workdir / "study_run.json", [spec(args, variant), *overrides(args, seed, at_start=first)]
            record = json.loads(done.read_text()) if done.is_file() else {}
            if record.get("key") == key:
                print(f"[study] {variant} seed {seed}: done before ({record['accuracy']:.1%})", flush=True)
            else:
                shutil.rmtree(workdir, ignore_errors=True)  # an unfinished run starts over
                print(f"[study] {variant} seed {seed}: {args.steps} steps in {workdir}", flush=True)
                t0 = time.perf_counter()
                train.train(cfg, workdir)
                wall = time.perf_counter() - t0
                rows = read_rows(workdir)
                record = {"key": key, "variant": variant, "rule": cfg.selection.rule, "ratio": cfg.selection.ratio,
                          "seed": seed, "wall_s": wall, **summarise_run(rows, args.steps)}
                if first:
                    k = accuracy_key(rows[0])
                    record["before"] = {"accuracy": rows[0][k], "accuracy_se_problems": rows[0].get(k + "_se"),
                                        "n_problems": None}
                done.write_text(json.dumps(record))
                print(f"[study] {variant} seed {seed}: accuracy {record['accuracy']:.1%}, kept "
                      f"{record['kept_fraction']:.3f}, {wall:.0f} s (study {time.perf_counter() - t_study:.0f} s)",
                      flush=True)
            before = record.get("before", before)
            batch = {"prompts_per_step": cfg.prompts_per_step, "samples_per_prompt": cfg.rollout.samples_per_prompt,
                     "learning_rate": cfg.optim.learning_rate, "schedule": cfg.optim.schedule}
            runs.append(record)
    return {"runs": runs, "memory": memory, "before": before, "teacher": teacher_score(args, cfg), "batch": batch,
            "study_wall_s": time.perf_counter() - t_study}


def teacher_score(args, cfg) -> dict | None:
    """The teacher's held-out accuracy that the demo's prepare step measured under this eval spec (cached file)."""
    import dataclasses

    from tipjax import demo

    p = demo.paths("tiny" if args.smoke else "full")
    path = p["base"] / f"{p['teacher'].name}.eval-{demo._fingerprint(dataclasses.asdict(cfg.eval))}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- statistics ------------------------------------------------------------------------------------------------

def mean_se(xs: list[float]) -> tuple[float, float | None]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def aggregate(raw: dict, args) -> dict:
    by_rule: dict[str, list[dict]] = {}
    for r in raw["runs"]:
        by_rule.setdefault(r["variant"], []).append(r)
    before = raw["before"]["accuracy"]
    base = {r["seed"]: r["accuracy"] for r in by_rule.get("all", [])}
    table = {}
    for variant, rs in by_rule.items():
        acc = [r["accuracy"] for r in rs]
        m, se = mean_se(acc)
        paired = [r["accuracy"] - base[r["seed"]] for r in rs if r["seed"] in base]
        dm, dse = mean_se(paired) if paired and variant != "all" else (None, None)
        mem = raw["memory"].get(variant, {})
        table[variant] = {
            "rule": rs[0]["rule"], "ratio": rs[0]["ratio"], "family": rs[0]["rule"], "n_seeds": len(rs),
            "accuracy": acc, "accuracy_mean": m, "accuracy_se": se, "gain": m - before,
            "vs_all_paired_mean": dm, "vs_all_paired_se": dse,
            "kept_fraction": sum(r["kept_fraction"] for r in rs) / len(rs),
            "tokens_with_gradient": sum(r["tokens_with_gradient"] for r in rs) / len(rs),
            "response_tokens": sum(r["response_tokens"] for r in rs) / len(rs),
            "wall_s": sum(r["wall_s"] for r in rs) / len(rs),
            "step_seconds_total": sum(r["step_seconds_total"] for r in rs) / len(rs),
            "step_seconds_median": sum(r["step_seconds_median"] for r in rs) / len(rs),
            "step_temporaries_mib": mem.get("temporaries", float("nan")) * 1024,
            "step_peak_estimate_mib": mem.get("peak_estimate", float("nan")) * 1024,
            "peak_memory_gib": max((r["peak_memory_gib"] or 0 for r in rs), default=0) or None,
        }
    curves = {}
    for variant, rs in by_rule.items():
        curves[variant] = {k: _mean_curve([r["curves"][k] for r in rs]) for k in CURVES}
        curves[variant]["eval"] = [[s, sum(r["eval_curve"][j][1] for r in rs) / len(rs)]
                                   for j, (s, _) in enumerate(rs[0]["eval_curve"])]
    return {"table": table, "curves": curves}


def _mean_curve(series: list[list]) -> list:
    out = []
    for vals in zip(*series):
        vals = [v for v in vals if v is not None]
        out.append(round(sum(vals) / len(vals), 6) if vals else None)
    return out


def compare(table: dict, a: str, b: str, paired: bool = True) -> tuple[float, float] | None:
    """a - b in accuracy points with its standard error: paired over seeds when both share them."""
    if a not in table or b not in table:
        return None
    if paired and b == "all" and table[a]["vs_all_paired_se"] is not None:
        return 100 * table[a]["vs_all_paired_mean"], 100 * table[a]["vs_all_paired_se"]
    xa, xb = table[a]["accuracy"], table[b]["accuracy"]
    if paired and len(xa) == len(xb) and len(xa) > 1:
        return tuple(100 * v for v in mean_se([x - y for x, y in zip(xa, xb)]))
    (ma, sa), (mb, sb) = mean_se(xa), mean_se(xb)
    return 100 * (ma - mb), (100 * math.hypot(sa, sb) if sa is not None and sb is not None else float("nan"))


def claims(table: dict) -> list[str]:
    """One line per claim of PAPER.md section 6 with this study's numbers. d = difference in accuracy points,
    +- its standard error over seeds (paired by seed: the same seed gives the same prompt order)."""
    lines = []

    def verdict(d, se, kind):
        if d is None:
            return "not run"
        lo, hi = d - 2 * se, d + 2 * se
        if kind == "geq":      # a >= b
            return "reproduced" if lo > 0 else "not reproduced" if hi < 0 else (
                "consistent (a >= b within noise, not shown better)" if d >= 0 else "inconclusive (lower, within 2 SE)")
        if kind == "approx":   # a ~ b: the difference is within 2 SE, or a is better
            return "reproduced" if lo <= 0 <= hi or lo > 0 else "not reproduced (a worse by > 2 SE)"
        if kind == "worse":    # a clearly < b
            return "reproduced" if hi < 0 else "not reproduced" if lo > 0 else "not shown (within 2 SE)"
        raise ValueError(kind)

    def line(text, a, b, kind, paper, control=False):
        c = compare(table, a, b)
        if c is None:
            return  # a rule not in this study
        d, se = c
        if not _ok(se):
            lines.append(f"- {text} (paper: {paper}): {a} - {b} = {d:+.1f} points, one seed: no verdict.")
            return
        word = verdict(d, se, kind)
        if control:  # not a claim of the paper: say whether it holds here
            word = word.replace("not reproduced", "does not hold").replace("reproduced", "holds")
        lines.append(f"- {text} (paper: {paper}): {a} - {b} = {d:+.1f} ± {se:.1f} points -> **{word}**.")

    line("Soft-OR 50% >= all tokens (Table 5)", "soft_or50", "all", "geq", "+1.1 to +3.7 on MATH-500")
    line("Entropy sampling 50% ~ all tokens (Table 3)", "entropy50", "all", "approx", "-0.2 to +3.0 on MATH-500")
    line("Soft-OR 20% ~ all tokens (Table 5)", "soft_or20", "all", "approx", "+0.7 to +3.2 on MATH-500")
    line("Entropy sampling 20% ~ all tokens (Table 3)", "entropy20", "all", "approx", "-2.6 to +2.6 on MATH-500")
    line("Soft-OR beats entropy-only at 50% (Table 5)", "soft_or50", "entropy50", "geq", "+0.5 to +1.3 on MATH-500")
    line("Soft-OR beats entropy-only at 20% (Table 5)", "soft_or20", "entropy20", "geq", "+0.6 to +3.5 on MATH-500")
    line("Soft-OR bottom 50% clearly worse than top 50% (Table 6)", "soft_or_bottom50", "soft_or50", "worse",
         "-5.9 to -7.3 on MATH-500")
    line("Q3-only 20% nearly matches all tokens (Table 4)", "q3_20", "all", "approx", "-1.0 to +0.8 on MATH-500")
    line("Q3-only 10% nearly matches all tokens (Table 4)", "q3_10", "all", "approx", "-1.0 to -0.6 on MATH-500")
    line("Div-only 50% ~ all tokens (Table 8)", "div50", "all", "approx", "-0.4 on MATH-500")
    line("Soft-OR 50% beats random 50% (control; not in the paper)", "soft_or50", "random50", "geq", "no result",
         control=True)
    line("Entropy sampling 50% beats random 50% (control; not in the paper)", "entropy50", "random50", "geq",
         "no result", control=True)
    if "all" in table:
        g_all = table["all"]["gain"]
        for q in ("q3_10", "q3_20"):
            if q in table and g_all > 0:
                share = table[q]["gain"] / g_all
                lines.append(f"- {q} recovers {share:.0%} of the all-token gain ({100 * table[q]['gain']:+.1f} vs "
                             f"{100 * g_all:+.1f} points; \"most\" read as >= 75%) -> "
                             f"**{'reproduced' if share >= 0.75 else 'not reproduced'}**.")
        mib = {v: r["step_temporaries_mib"] for v, r in table.items()}
        t_all = mib["all"]
        others = [f"{v} {mib[v]:.1f} MiB ({mib[v] / t_all - 1:+.0%})"
                  for v in ("soft_or50", "entropy50", "soft_or20", "q3_10") if v in table]
        if _ok(t_all) and t_all > 0 and others:
            saves = min(mib.values()) < 0.9 * t_all
            lines.append(f"- Memory (Section 7: -47% peak at 50% for Qwen3): the compiled training step needs "
                         f"{t_all:.1f} MiB of temporaries with all tokens, {'; '.join(others)} -> "
                         f"**{'reproduced' if saves else 'not reproduced'}** (a saving of 10% or more counts).")
    return lines


# --- plots -------------------------------------------------------------------------------------------------------

def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _smooth(values: list, width: int) -> tuple[list[int], list[float]]:
    pts = [(i + 1, v) for i, v in enumerate(values) if v is not None]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if width <= 1:
        return xs, ys
    out = [sum(ys[max(0, i - width + 1): i + 1]) / len(ys[max(0, i - width + 1): i + 1]) for i in range(len(ys))]
    return xs, out


def plots(data: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, curves = data["table"], data["curves"]
    before, teacher = data["before"]["accuracy"], (data.get("teacher") or {}).get("mean_at_n")
    colors = {"all": "black", "entropy_sample": "tab:blue", "soft_or": "tab:red", "soft_or_bottom": "tab:pink",
              "q3": "tab:green", "div": "tab:purple", "random": "tab:gray"}
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rule in dict.fromkeys(t["rule"] for t in table.values()):
        rows = sorted((t for t in table.values() if t["rule"] == rule), key=lambda t: t["kept_fraction"])
        ax.errorbar([t["kept_fraction"] for t in rows], [100 * t["accuracy_mean"] for t in rows],
                    yerr=[100 * (t["accuracy_se"] or 0) for t in rows], marker="o", capsize=3, color=colors.get(rule),
                    label=FAMILY.get(rule.replace("_sample", ""), rule))
    for variant, t in table.items():
        ax.annotate(variant, (t["kept_fraction"], 100 * t["accuracy_mean"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    ax.axhline(100 * before, ls=":", color="gray", label="SFT student (before OPD)")
    if "all" in table:
        ax.axhline(100 * table["all"]["accuracy_mean"], ls="--", color="black", lw=0.8, label="all tokens (level)")
    if teacher is not None:
        ax.axhline(100 * teacher, ls="-.", color="tab:orange", lw=0.8, label="teacher")
    _label(ax, "kept-token fraction (mean over steps)", "held-out greedy accuracy after OPD (%)",
           "accuracy vs kept fraction (mean ± SE over seeds)")
    written.append(_save(fig, out / "accuracy_vs_kept.png"))

    n_steps = max(len(c["loss"]) for c in curves.values())
    width = max(1, n_steps // 25)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant, c in curves.items():
        style = dict(color=colors.get(table[variant]["rule"]), ls="-" if table[variant]["ratio"] >= 0.5 else "--")
        axes[0].plot(*_smooth(c["loss"], width), label=variant, **style)
        axes[1].plot(*_smooth(c["rkl_all"], width), label=variant, **style)
    axes[0].set_title("training loss (reverse KL on the kept tokens)", fontsize=10)
    axes[1].set_title("reverse KL on all response tokens of the rollouts", fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"mean over seeds, moving average over {width} steps", fontsize=9)
    written.append(_save(fig, out / "training_loss.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, c in curves.items():
        pts = [[0, before]] + c["eval"]
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=variant,
                color=colors.get(table[variant]["rule"]), ls="-" if table[variant]["ratio"] >= 0.5 else "--")
    _label(ax, "step", "held-out greedy accuracy (%)", "accuracy vs step (mean over seeds)")
    written.append(_save(fig, out / "accuracy_vs_step.png"))

    shown = [v for v in ("all", "soft_or50", "q3_10") if v in curves] or list(curves)[:1]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False, sharey=True)
    for ax, variant in zip(axes[0], shown):
        for q, col, ls in zip(("q1", "q2", "q3", "q4"), ("tab:red", "tab:orange", "tab:green", "tab:gray"),
                              ("--", "--", "-", "-")):
            ax.plot(*_smooth(curves[variant][q], width), label=q, color=col, ls=ls)
        ax.set_title(f"TIP quadrant shares: {variant}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("share of response tokens")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("median splits on both axes (the default quadrant thresholds): q1 = q4 and q2 = q3 up to ties",
                 fontsize=9)
    written.append(_save(fig, out / "quadrants.png"))
    return written


# --- the report ----------------------------------------------------------------------------------------------------

def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _pm(m, se, scale=100.0, digits=1):
    if not _ok(m):
        return "-"
    return f"{scale * m:.{digits}f}" + (f" ± {scale * se:.{digits}f}" if _ok(se) else "")


def render(data: dict, command: str) -> str:
    s, table = data["settings"], data["table"]
    b, t = data["before"], data.get("teacher") or {}
    lines = [
        "# The TIP study at CPU scale",
        "",
        "OPD on tipjax's built-in arithmetic task (the demo: `configs/demo.py`), one row per token-selection rule of",
        "PAPER.md sections 6-7, several seeds each. Made by `scripts/study_tip.py` on this machine; every number below",
        "is from that run (`docs/study.json` has them all, per seed).",
        "",
        "```",
        command,
        "```",
        "",
        f"- Models: the demo's cached teacher and SFT student (configs/demo.py's prepare step). Teacher held-out "
        f"accuracy {_pm(t.get('mean_at_n'), t.get('mean_at_n_se'))}%; SFT student before OPD "
        f"{_pm(b['accuracy'], b.get('accuracy_se_problems'))}% (SE over problems).",
        f"- Each run: {s['steps']} OPD steps of {s['prompts_per_step']} prompts x {s['samples_per_prompt']} samples "
        f"(the demo's batch; lr {s['learning_rate']:g}, {s['schedule']} schedule over the run); only "
        f"`selection.rule`/`selection.ratio` differ. Seeds {', '.join(map(str, range(s['seeds'])))} set the rollout "
        "randomness and the prompt order (the same for every rule).",
        f"- Evaluation: greedy accuracy on {s['eval_problems']} held-out problems (as the demo), every "
        f"{s['eval_every']} steps; the table's accuracy is the last one. A single run's SE over problems is "
        f"about {100 * data['typical_se_problems']:.1f} points.",
        f"- Machine: {s['machine']}. Study wall time {data['study_wall_s'] / 60:.1f} min (the runs' own wall times "
        f"sum to {sum(r['wall_s'] for r in data['runs']) / 60:.1f} min).",
        "",
        "## Results",
        "",
        "Accuracy: mean ± standard error over seeds. Gain: over the SFT student. vs all: the difference to the",
        "all-token run of the same seed, mean ± SE over seeds. Kept: mean kept-token fraction over steps; tokens with",
        "gradient: summed over the run (of all response tokens). Step temporaries: the XLA memory analysis of the",
        "compiled training step (`tipjax.train --dry_run`), the only memory number this CPU backend reports. Wall: one",
        "run, compilation (or loading it from the cache) and evaluations included; step time: the median step.",
        "",
        "| variant | rule, ratio | accuracy % | gain (points) | vs all (points) | kept | tokens with gradient "
        "| step temporaries MiB | wall s | step s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, r in table.items():
        lines.append(
            f"| {v} | {r['rule']} {r['ratio']:g} | {_pm(r['accuracy_mean'], r['accuracy_se'])} | "
            f"{100 * r['gain']:+.1f} | {_pm(r['vs_all_paired_mean'], r['vs_all_paired_se'])} | "
            f"{r['kept_fraction']:.3f} | {r['tokens_with_gradient']:,.0f} / {r['response_tokens']:,.0f} | "
            f"{r['step_temporaries_mib']:.1f} | {r['wall_s']:.0f} | {r['step_seconds_median']:.2f} |")
    lines += ["", "Per seed (accuracy %): " + "; ".join(
        f"{v} {', '.join(f'{100 * a:.1f}' for a in r['accuracy'])}" for v, r in table.items()), ""]
    lines += ["## The paper's claims, one line each", "",
              "d = a - b in accuracy points ± SE over seeds (paired by seed). Verdict rules: `>=` holds when "
              "d - 2 SE > 0, fails when d + 2 SE < 0; `~` holds when 0 lies within d ± 2 SE (or a is better); "
              "`clearly worse` holds when d + 2 SE < 0.", ""]
    lines += claims(table)
    lines += ["", "## Plots", "",
              "![accuracy vs kept fraction](study/accuracy_vs_kept.png)", "",
              "![accuracy vs step](study/accuracy_vs_step.png)", "",
              "![training loss per rule](study/training_loss.png)", "",
              "![TIP quadrant shares](study/quadrants.png)", "",
              "## Discussion", "", "<!-- notes -->", "(to be written from the finished run)", "<!-- /notes -->", ""]
    return "\n".join(lines)


def write_outputs(data: dict, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots(data, out / "study")
    md = render(data, command)
    old = out / "study.md"
    if old.is_file() and (kept := NOTES.search(old.read_text())):
        md = NOTES.sub(lambda _: kept.group(0), md)
    old.write_text(md)
    print(f"[study] wrote {old} and {out / 'study'}/*.png", flush=True)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = "python scripts/study_tip.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    if args.render_only:
        data = json.loads((args.out / "study.json").read_text())
        write_outputs(data, args.out, data["command"])
        return 0
    raw = run_study(args)
    data = {"settings": {"steps": args.steps, "eval_every": args.eval_every, "seeds": args.seeds,
                         "rules": list(args.rules), "smoke": args.smoke, "eval_limit": args.eval_limit,
                         "eval_problems": _eval_problems(args), "machine": _machine(), **raw["batch"]},
            "command": command, "before": raw["before"], "teacher": raw["teacher"], "memory": raw["memory"],
            "study_wall_s": raw["study_wall_s"], **aggregate(raw, args)}
    ses = [r["accuracy_se_problems"] for r in raw["runs"] if r.get("accuracy_se_problems") is not None]
    data["typical_se_problems"] = sum(ses) / len(ses) if ses else float("nan")
    data["runs"] = [{k: v for k, v in r.items() if k != "curves"} for r in raw["runs"]]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"[study] wrote {args.out / 'study.json'}", flush=True)
    write_outputs(data, args.out, command)
    return 0


def _eval_problems(args) -> int:
    from tipjax import demo

    n = demo.SIZES["tiny" if args.smoke else "full"]["n_eval"]
    return min(n, args.eval_limit) if args.eval_limit else n


def _machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} CPU cores visible, JAX on CPU"


if __name__ == "__main__":
    sys.exit(main())
