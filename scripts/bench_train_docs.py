"""Renders docs/bench_train.json into the "## Training" section of docs/performance.md.

The prose lives in scripts/templates/training_*.md (str.format placeholders); this file builds only the tables
and the computed sentences' values.
"""

from __future__ import annotations

from pathlib import Path

import perf_doc  # scripts/ is on sys.path when run as a script

TEMPLATES = Path(__file__).resolve().parent / "templates"

# The paper's per-GPU peak (Table 3/4, 8 x H200), GB as printed.
PAPER_PEAK_GB = {"all": 72.0, "entropy_sample@0.5": 38.1, "q3@0.1": 36.2}


def template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def rule_name(r):
    return "all@1.0" if r.get("rule") == "all" else f"{r.get('rule')}@{r.get('ratio')}"


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


# --- part 1: step throughput --------------------------------------------------------------------------------

def throughput_table(cases: list[dict]) -> str:
    threads = list(cases[0]["transformers_by_threads"])
    head = " | ".join(f"transformers steps/s ({t} thr) | ratio" for t in threads)
    lines = [f"| size | rule | tipjax steps/s | {head} | tipjax resp. tok/s | transformers resp. tok/s (faster) | "
             f"tipjax compile s |",
             f"|---|---|---:|{'---:|---:|' * len(threads)}---:|---:|---:|"]
    for r in cases:
        rule = "all@1.0" if r["rule"] == "all" else f"{r['rule']}@{r['retention']}"
        cols = " | ".join(f"{r['transformers_by_threads'][t]['steps_per_s']:.2f} | "
                          f"**{r['transformers_by_threads'][t]['ratio']:.2f}x**" for t in threads)
        lines.append(f"| {r['size']} | {rule} | {r['tipjax_steps_per_s']:.2f} | {cols} | "
                     f"{r['tipjax_response_tokens_per_s']:,.0f} | "
                     f"{r['transformers_best_response_tokens_per_s']:,.0f} | {r['tipjax_compile_s']:.1f} |")
    return "\n".join(lines)


def throughput_block(tp: dict) -> str:
    worst = min(r["ratio_vs_best_threads"] for r in tp["cases"])
    return template("training_throughput.md").format(
        timed_steps=tp["cases"][0]["timed_steps"], command=tp["command"], table=throughput_table(tp["cases"]),
        target="met" if worst >= 2 else "not met", worst=worst, machine=tp["machine"])


# --- part 2: dry-run memory -----------------------------------------------------------------------------------

def memory_table(rows: list[dict]) -> str:
    lines = ["| rule | overrides | arguments | outputs | aliased | temporaries | peak estimate GiB | KV cache GiB if "
             "rows spread over data x fsdp | paper peak GB (H200) | compile s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rule = rule_name(r)
        paper = PAPER_PEAK_GB.get(rule.replace("all@1.0", "all"))
        over = " ".join(f"`{o[len('--config.'):]}`" for o in r.get("overrides", [])) or "-"
        if "error" in r:
            last = r["error"].strip().splitlines()[-1][:120] if r["error"].strip() else ""
            lines.append(f"| {rule} | {over} | failed: {last} | | | | | | {fmt(paper, '.1f')} | |")
            continue
        p = r["per_device_gib"]
        lines.append(f"| {rule} | {over} | {p['arguments']:.2f} | {p['outputs']:.2f} | {p['aliased']:.2f} | "
                     f"{p['temporaries']:.2f} | **{p['peak_estimate']:.2f}** | "
                     f"{r['kv_cache_gib_per_device']:.1f} | {fmt(paper, '.1f')} | {r['compile_s']} |")
    return "\n".join(lines)


def largest_temporaries(ok: list[dict]) -> str:
    """One line per distinct override set: the largest buffers in XLA's preallocated temp allocation."""
    lines, seen = [], set()
    for r in ok:
        key = tuple(r.get("overrides", []))
        if r.get("largest_temporaries") and key not in seen:
            seen.add(key)
            items = ", ".join(f"`{t['shape']}` {t['gib']:.1f}" for t in r["largest_temporaries"][:6])
            lines.append(f"Largest temporaries ({rule_name(r)}{', ' + ' '.join(key) if key else ''}; XLA "
                         f"buffer assignment, GiB): {items}.\n")
    return "".join(lines)


def _peak(ok: list[dict], rule: str, override: str | None = None) -> float | None:
    """The peak estimate of the row for `rule` with exactly `override` (or none)."""
    want = [] if override is None else [override]
    rows = [r for r in ok if rule_name(r) == rule and r.get("overrides", []) == want]
    return rows[0]["per_device_gib"]["peak_estimate"] if rows else None


def notes(ok: list[dict]) -> str:
    """The paragraph under the table, its numbers from the rows (a row that did not run: "-")."""
    plain = {round(r["per_device_gib"]["peak_estimate"], 1) for r in ok if not r.get("overrides")}
    base = _peak(ok, "all@1.0")
    selected = [r["per_device_gib"]["peak_estimate"] for r in ok if not r.get("overrides") and r.get("rule") != "all"]
    if len(plain) == 1:
        peak_sentence = "Every rule compiles to the same peak."
    else:
        extra = fmt(max(selected) - base if selected and base is not None else None)
        peak_sentence = (f"The selection rules' peak is {extra} GiB above all-token training's: with micro_batches > 1 "
                         f"and norm_scope \"batch\" they plan the selection in a statistics pass over the whole batch "
                         f"and keep the teacher's hidden states for the gradient pass (\"Batch-scope selection under "
                         f"micro-batching\" below).")
    groups, unshared = _peak(ok, "all@1.0", "--config.rollout.groups=8"), _peak(
        ok, "all@1.0", "--config.rollout.share_prompt=False")
    diff = lambda a, b: fmt(a - b if a is not None and b is not None else None)
    return template("training_memory_notes.md").format(peak_sentence=peak_sentence, groups_saving=diff(base, groups),
                                                       share_cost=diff(unshared, base))


def memory_block(mem: dict, ok: list[dict]) -> str:
    m = ok[0]["settings"]
    fields = {**m, **ok[0]["inputs_gib"],
              "config": mem["config"], "command": mem["command"], "tipjax_commit": mem["tipjax_commit"],
              "mesh": " x ".join(f"{k} {v}" for k, v in m["mesh"].items()),
              "rows_per_micro_batch": m["rows"] // m["micro_batches"], "table": memory_table(mem["rows"]),
              "largest_temporaries": largest_temporaries(ok), "notes": "\n" + notes(ok)}
    return template("training_memory.md").format(**fields)


def write_docs(result: dict) -> None:
    blocks = []
    if result.get("throughput"):
        blocks.append(throughput_block(result["throughput"]))
    mem = result.get("memory")
    ok = [r for r in (mem or {}).get("rows", []) if "error" not in r]
    if mem and ok:
        blocks.append(memory_block(mem, ok))
    section = "\n\n".join(["## Training", *(b.strip("\n") for b in blocks)]) + "\n"
    perf_doc.replace_section("Training", section)
