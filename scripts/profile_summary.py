"""Where a compiled program's device time goes: run it under `jax.profiler.trace` and add up its kernels by the
`jax.named_scope` path they came from.

    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        run()
    summary = summarize(log_dir, compiled.as_text())

Kernels are the trace's complete events on the accelerator (a "/device:..." process); on CPU, where XLA runs on
host threads, the thunks on its threads. Each kernel is traced back to its HLO instruction (by name,
or the event's own `hlo_op`) and from there to the instruction's `op_name` metadata, the jax scope path
(e.g. `jit(step)/update/student/transpose(jvp(...))/mlp/dot_general`). Used by scripts/bench_accelerator.py.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path

PARTS = ("teacher", "student", "selection", "statistics")  # the loss and gradient passes (step.py's scopes)
BLOCK_STAGES = ("attn_norm", "qkv", "rope", "attention", "out_proj", "mlp")


def _key(name: str) -> str:
    """Kernel and HLO names differ in punctuation (XLA:GPU names `fusion.12`'s kernel `fusion_12`)."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_")


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name (normalised) -> its op_name metadata. A fusion without its own (XLA's wrapped
    single ops) takes that of its fused computation's root, else of the first instruction there with one."""
    own, calls, inner = {}, {}, collections.defaultdict(list)
    computation = None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if head:
            computation = head.group(1)
            continue
        m = re.match(r"^\s+(ROOT )?%(\S+) = ", line)
        if not m:
            continue
        meta = re.search(r'op_name="([^"]*)"', line)
        if meta:
            own.setdefault(_key(m.group(2)), meta.group(1))
            inner[computation].insert(0 if m.group(1) else len(inner[computation]), meta.group(1))
        called = re.search(r"calls=%([\w.-]+)", line)
        if called:
            calls[_key(m.group(2))] = called.group(1)
    for name, computation in calls.items():
        if name not in own and inner.get(computation):
            own[name] = inner[computation][0]
    return own


def _unwrap(segment: str) -> str:
    """`transpose(jvp(update))` -> `update`: the scope name inside jax's transformation wrappers."""
    while (m := re.fullmatch(r"[\w.]+\((.*)\)", segment)):
        segment = m.group(1)
    return segment


def scope_of(op_name: str) -> dict[str, str]:
    """The parts of a scope path this summary groups by: stage ("rollout", "grad" for the teacher and student
    passes and the selection, "optimizer" for step.py's "update" scope, else "other"), part, direction and
    block sub-stage."""
    segments = [_unwrap(s) for s in op_name.split("/")]
    part = next((p for p in PARTS if p in segments), "-")
    scopes = segments[1:]  # not the jitted function's own name (step.build_update's is "update")
    stage = ("rollout" if "rollout" in scopes else "optimizer" if "update" in scopes else
             "grad" if part != "-" else "other")
    return dict(stage=stage, part=part,
                direction=("recompute" if "rematted_computation" in op_name else
                           "backward" if "transpose(" in op_name else "forward"),
                block=next((b for b in reversed(segments) if b in BLOCK_STAGES), "-"))


def kernel_events(log_dir: str | Path) -> list[dict]:
    """The complete ("X") events of the newest perfetto trace under log_dir that ran on a device, or on CPU the
    thunks on XLA's threads."""
    files = sorted(Path(log_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {log_dir} (jax.profiler.trace(create_perfetto_trace=True))")
    with gzip.open(files[-1]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    device = [e for e in complete if "/device:" in procs.get(e["pid"], "")]
    if not device:
        # XLA:CPU runs its thunks on several "tf_XLA..." threads; "::" names are runtime internals (waits).
        device = [e for e in complete if threads.get((e["pid"], e["tid"]), "").startswith("tf_XLA")
                  and "::" not in e["name"] and not e["name"].startswith("end: ")]
    return _leaves(device)


def _leaves(events: list[dict]) -> list[dict]:
    """Drops events that enclose another on the same thread (XLA:CPU traces a while loop around its body's
    kernels), so no time is counted twice."""
    out = []
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[(e["pid"], e["tid"])].append(e)
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        for i, e in enumerate(thread):
            nxt = thread[i + 1] if i + 1 < len(thread) else None
            if nxt is None or nxt["ts"] >= e["ts"] + e["dur"]:
                out.append(e)
    return out


def summarize(log_dir: str | Path, hlo_text: str, top: int = 30) -> dict:
    """Device milliseconds in total and the span they lie in, by (stage, part, direction, block sub-stage), and
    the `top` kernels."""
    names = op_names(hlo_text)
    by_scope, by_kernel = collections.Counter(), collections.Counter()
    counts, unmatched = collections.Counter(), 0.0
    events = kernel_events(log_dir)
    for e in events:
        ms = e["dur"] / 1e3
        hlo_op = e.get("args", {}).get("hlo_op") or e["name"]
        op_name = names.get(_key(hlo_op)) or names.get(_key(e["name"]))
        if op_name is None:
            unmatched += ms
            op_name = ""
        s = scope_of(op_name)
        by_scope[(s["stage"], s["part"], s["direction"], s["block"])] += ms
        by_kernel[e["name"]] += ms
        counts[e["name"]] += 1
    total = sum(by_scope.values())
    # First kernel start to last kernel end: total / span is the share of that time the device was busy.
    span = (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) / 1e3 if events else 0.0
    return dict(
        total_ms=total, span_ms=span, kernels=len(events), unmatched_ms=unmatched,
        by_scope=[dict(stage=k[0], part=k[1], direction=k[2], block=k[3], ms=v) for k, v in by_scope.most_common()],
        top_kernels=[dict(name=k, ms=v, count=counts[k]) for k, v in by_kernel.most_common(top)])


def profile(run, log_dir: str | Path, hlo_text: str = "", top: int = 30) -> dict:
    """Runs `run()` once under `jax.profiler.trace` into log_dir and returns summarize(...) of it; the trace is
    deleted afterwards, whatever happens. Profiler errors propagate."""
    import shutil

    import jax

    try:
        with jax.profiler.trace(str(log_dir), create_perfetto_trace=True):
            run()
        return summarize(log_dir, hlo_text, top)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
