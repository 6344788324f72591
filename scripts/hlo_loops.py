"""Reading a compiled sampler's HLO text (`jit(...).lower(...).compile().as_text()`): which instructions run
inside the decode loops, and which of them write a buffer the size of a layer's KV cache.

Used by scripts/bench_accelerator.py (the "hlo" row, on the accelerator's own compiler) and by
tests/test_decode_paths.py (on XLA:CPU).
"""

from __future__ import annotations

import re

# Instructions that produce a cache-shaped value without writing one: views, loop plumbing, in-place updates.
PASS_THROUGH = ("parameter", "get-tuple-element", "bitcast", "tuple", "dynamic-update-slice")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%(\S+) = (\w+)\[([0-9,]*)\]\{[^}]*\} ([\w-]+)\(")


def computations(text: str) -> dict[str, list[str]]:
    """HLO computation name -> its instruction lines."""
    comps, name = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if head:
            name = head.group(1)
            comps[name] = []
        elif line.startswith("}"):
            name = None
        elif name:
            comps[name].append(line)
    return comps


def decode_loop_bodies(text: str, carried: str) -> list[str]:
    """Names of the bodies of the while loops whose state holds an array of type `carried` (the sampler's
    tokens, e.g. "s32[8,192]": the decode loops and not the prefill's layer scan), outermost first."""
    return [m.group(2) for m in re.finditer(r"= \((.*)\) while\(.*\bbody=%([\w.-]+)", text) if carried in m.group(1)]


def loop_lines(text: str, carried: str) -> list[str]:
    """Every instruction line that runs inside the decode loops: their bodies and what they call."""
    comps = computations(text)
    todo, seen = decode_loop_bodies(text, carried), set()
    if not todo:
        raise ValueError(f"no while loop carries {carried} in this HLO")
    while todo:
        name = todo.pop()
        if name not in seen and name in comps:
            seen.add(name)
            todo += re.findall(r"(?:calls|body|condition|to_apply)=%([\w.-]+)", "\n".join(comps[name]))
    return [line for name in sorted(seen) for line in comps[name]]


def top_level_lines(text: str, carried: str) -> list[str]:
    """The instructions of the decode loop bodies themselves (each one a kernel or a loop on GPU), not the
    insides of their fusions."""
    comps = computations(text)
    return [line for body in decode_loop_bodies(text, carried) for line in comps.get(body, [])]


def cache_writes(lines: list[str], batch: int, kv_heads: int, head_dim: int, min_slots: int,
                 ops: tuple[str, ...] | None = None) -> list[str]:
    """The instructions among `lines` whose output is a [batch, kv_heads, S, head_dim] buffer with
    S >= min_slots (a layer's cache or a window of it), excluding PASS_THROUGH ops; `ops` keeps only those.
    Returns "name op dtype[dims]" strings."""
    found = []
    for line in lines:
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, dtype, dims, op = m.group(1), m.group(2), [int(d) for d in m.group(3).split(",") if d], m.group(4)
        if op in PASS_THROUGH or (ops is not None and op not in ops):
            continue
        if len(dims) == 4 and dims[:2] == [batch, kv_heads] and dims[3] == head_dim and dims[2] >= min_slots:
            if op == "fusion" and ("dynamic_update_slice" in name or "dynamic-update-slice" in name):
                continue  # the in-place write of this step's key/value, named after its root
            found.append(f"{name} {op} {dtype}[{','.join(map(str, dims))}]")
    return found
