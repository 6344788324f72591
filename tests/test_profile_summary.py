"""scripts/profile_summary.py: a real jax.profiler trace of a scoped program is attributed to its jax scopes;
scope paths, nested events and fusions without metadata are read as documented."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import profile_summary  # noqa: E402


def _loss(x, w):
    with jax.named_scope("student"):
        with jax.named_scope("mlp"):
            h = jnp.tanh(x @ w)
        with jax.named_scope("attention"):
            h = jax.nn.softmax(h @ w.T, axis=-1) @ h
    with jax.named_scope("update"):
        return jnp.sum(h * h)


def test_trace_of_a_scoped_program_is_attributed(tmp_path):
    grad = jax.jit(jax.grad(_loss, argnums=1))
    x, w = jnp.ones((256, 256)), jnp.full((256, 256), 0.01)
    compiled = grad.lower(x, w).compile()
    compiled(x, w).block_until_ready()
    log_dir = tmp_path / "trace"

    def run():
        for _ in range(3):
            compiled(x, w).block_until_ready()

    summary = profile_summary.profile(run, log_dir, compiled.as_text())
    assert not log_dir.exists()  # the trace is not kept
    assert summary["kernels"] > 0 and summary["total_ms"] > 0
    assert summary["unmatched_ms"] < 0.5 * summary["total_ms"]
    rows = {(r["stage"], r["part"], r["direction"], r["block"]): r["ms"] for r in summary["by_scope"]}
    for direction in ("forward", "backward"):
        for block in ("mlp", "attention"):
            assert rows.get(("grad", "student", direction, block), 0) > 0, (direction, block, sorted(rows))
    assert abs(sum(rows.values()) - summary["total_ms"]) < 1e-6
    # The matmuls ran 3 times each: every kernel of the program is counted once per run, not more.
    assert {k["count"] for k in summary["top_kernels"]} <= {3, 6, 9, 12}


def test_scope_paths():
    assert profile_summary.scope_of("jit(step)/transpose(jvp(student))/mlp/dot_general") == dict(
        stage="grad", part="student", direction="backward", block="mlp")
    assert profile_summary.scope_of("jit(step)/rollout/while/body/closed_call/attention/dot_general") == dict(
        stage="rollout", part="-", direction="forward", block="attention")
    assert profile_summary.scope_of("jit(step)/transpose(jvp(teacher))/rematted_computation/qkv/dot")[
        "direction"] == "recompute"
    assert profile_summary.scope_of("jit(step)/update/add")["stage"] == "optimizer"
    # The update compiled alone (step.build_update: its function is named "update"): its passes stay "grad".
    assert profile_summary.scope_of("jit(update)/transpose(jvp(student))/mlp/dot_general")["stage"] == "grad"
    assert profile_summary.scope_of("jit(update)/update/add")["stage"] == "optimizer"
    assert profile_summary.scope_of("")["stage"] == "other"


def test_enclosing_events_are_dropped():
    loop = dict(pid=1, tid=2, ts=0.0, dur=10.0, name="while.1")
    a, b = dict(pid=1, tid=2, ts=1.0, dur=3.0, name="a"), dict(pid=1, tid=2, ts=5.0, dur=4.0, name="b")
    other = dict(pid=1, tid=3, ts=2.0, dur=1.0, name="c")
    assert sorted(e["name"] for e in profile_summary._leaves([loop, a, b, other])) == ["a", "b", "c"]


def test_fusion_without_metadata_takes_its_computations():
    hlo = "\n".join([
        "%wrapped_tanh_computation (p: f32[4]) -> f32[4] {",
        '  ROOT %tanh.1 = f32[4]{0} tanh(%p), metadata={op_name="jit(f)/student/mlp/tanh"}',
        "}",
        "ENTRY %main (x: f32[4]) -> f32[4] {",
        "  %wrapped_tanh = f32[4]{0} fusion(%x), kind=kLoop, calls=%wrapped_tanh_computation",
        '  ROOT %add.2 = f32[4]{0} add(%wrapped_tanh, %x), metadata={op_name="jit(f)/update/add"}',
        "}"])
    names = profile_summary.op_names(hlo)
    assert names["wrapped_tanh"] == "jit(f)/student/mlp/tanh"  # kernel names use "_" for HLO's "." and "-"
    assert names["add_2"] == "jit(f)/update/add"
