"""tipjax's Pallas decode kernel (decode_kernel.attend, interpret mode on CPU): q/k norm, rotation, the cache
write and the attention over each row's filled slots against a float64 numpy restatement; its lowering to
Triton."""

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_decode_paths import reference_decode

from tipjax.models import decode_kernel

B, KV, S, H = 4, 2, 96, 32  # three blocks of 32 slots
EPS = 1e-6


def prepared(x, weight, cos, sin):
    """float64: rms_norm over the head (if weight is given) then half-split rope (if cos is given); x [B, R, H]."""
    x = np.asarray(x, np.float64)
    if weight is not None:
        x = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + EPS) * np.asarray(weight, np.float64)
    if cos is not None:
        c, s = np.asarray(cos, np.float64)[:, None], np.asarray(sin, np.float64)[:, None]
        x1, x2 = x[..., :H // 2], x[..., H // 2:]
        x = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    return x


def case(groups, seed, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 5)
    qkv = jax.random.normal(keys[0], (B, KV, groups + 2, H), dtype) * 2
    k_cache, v_cache = (jax.random.normal(x, (B, KV, S, H), dtype) for x in keys[1:3])
    norm = 1 + 0.3 * jax.random.normal(keys[3], (groups + 1, H), dtype)
    angles = jax.random.uniform(keys[4], (B, H // 2)) * 6
    return qkv, k_cache, v_cache, norm, (jnp.cos(angles), jnp.sin(angles))


def expected(qkv, k_cache, v_cache, norm, rope, starts, index):
    """float64: the caches after the write and the attention output [B, K * G, H]."""
    g = qkv.shape[2] - 2
    cos, sin = rope if rope is not None else (None, None)
    rows = []
    for kv in range(KV):
        w = None if norm is None else np.asarray(norm, np.float64)
        q = prepared(qkv[:, kv, :g], None if w is None else w[:g], cos, sin)
        k = prepared(qkv[:, kv, g:g + 1], None if w is None else w[g:], cos, sin)
        rows.append((q, k[:, 0], np.asarray(qkv[:, kv, g + 1], np.float64)))
    k_ref, v_ref = np.array(k_cache, np.float64), np.array(v_cache, np.float64)
    for kv, (_, k, v) in enumerate(rows):
        k_ref[:, kv, index], v_ref[:, kv, index] = k, v
    q_all = np.concatenate([q for q, _, _ in rows], axis=1)  # [B, K * G, H], grouped by kv head
    return k_ref, v_ref, reference_decode(q_all, k_ref, v_ref, starts, np.full(B, index + 1))


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("index, starts", [
    (64, [0, 5, 33, 60]),     # ranges from the first slot, inside a block, across blocks, in the last block
    (31, [0, 31, 30, 1]),     # the new slot ends block 0; a row that sees only its new slot
    (0, [0, 0, 0, 0]),        # the first decode step of an empty cache: only the new slot
])
@pytest.mark.parametrize("norm_rope", [False, True])
def test_attend_equals_reference(groups, index, starts, norm_rope):
    qkv, k_cache, v_cache, norm, rope = case(groups, groups + index)
    norm, rope = (norm, rope) if norm_rope else (None, None)
    starts = np.asarray(starts)
    fn = jax.jit(functools.partial(decode_kernel.attend, eps=EPS))
    out, k2, v2 = fn(qkv, k_cache, v_cache, jnp.asarray(starts), jnp.int32(index), rope=rope, qk_norm=norm)
    k_ref, v_ref, want = expected(qkv, k_cache, v_cache, norm, rope, starts, index)
    np.testing.assert_allclose(k2, k_ref, atol=1e-5, rtol=1e-5)  # slot `index` written, nothing else changed
    np.testing.assert_array_equal(np.delete(np.asarray(k2), index, axis=2), np.delete(np.asarray(k_cache), index, 2))
    np.testing.assert_array_equal(v2, v_ref)
    np.testing.assert_allclose(np.asarray(out).reshape(B, KV * groups, H), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tiling", [decode_kernel.Tiling(block=64, num_warps=8, num_stages=3),
                                    decode_kernel.Tiling(block=128, num_warps=4, num_stages=1),
                                    decode_kernel.Tiling(block=64, transposed=True),
                                    decode_kernel.Tiling(block=64, splits=3, transposed=True)])
def test_other_tilings_equal_reference(tiling):
    qkv, k_cache, v_cache, norm, rope = case(2, 11)
    k_cache, v_cache = (jnp.concatenate([x, x[:, :, :32]], axis=2) for x in (k_cache, v_cache))  # 128 slots
    starts, index = np.array([0, 5, 70, 100]), 120
    out, k2, _ = decode_kernel.attend(qkv, k_cache, v_cache, jnp.asarray(starts), jnp.int32(index), rope=rope,
                                      qk_norm=norm, eps=EPS, tiling=tiling)
    k_ref, _, want = expected(qkv, k_cache, v_cache, norm, rope, starts, index)
    np.testing.assert_allclose(k2, k_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out).reshape(B, KV * 2, H), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=f"multiple of {tiling.block}"):  # 96 slots
        decode_kernel.attend(qkv, k_cache[:, :, :96], v_cache[:, :, :96], jnp.asarray(starts), jnp.int32(64),
                             tiling=tiling)


@pytest.mark.parametrize("splits", [2, 3, 4])
@pytest.mark.parametrize("index, starts", [
    (64, [0, 5, 33, 60]),     # 1-3 blocks per row: some splits get no block
    (95, [0, 31, 95, 40]),    # a row whose only visible slot is the new one, its block all masked
    (0, [0, 0, 0, 0]),        # an empty cache: every split but the first sees nothing
])
def test_split_rows_equal_reference(splits, index, starts):
    """Flash-decoding splits: each row's blocks shared over several programs, partial results combined."""
    qkv, k_cache, v_cache, norm, rope = case(4, splits + index)
    starts = np.asarray(starts)
    out, k2, v2 = decode_kernel.attend(qkv, k_cache, v_cache, jnp.asarray(starts), jnp.int32(index), rope=rope,
                                       qk_norm=norm, eps=EPS, tiling=decode_kernel.Tiling(splits=splits))
    k_ref, v_ref, want = expected(qkv, k_cache, v_cache, norm, rope, starts, index)
    np.testing.assert_allclose(k2, k_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(v2, v_ref)
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_allclose(np.asarray(out).reshape(B, KV * 4, H), want, atol=1e-5, rtol=1e-5)


def test_bf16_stays_close_and_keeps_dtypes():
    qkv, k_cache, v_cache, norm, rope = case(2, 7, jnp.bfloat16)
    starts, index = np.array([0, 10, 40, 70]), 80
    out, k2, _ = decode_kernel.attend(qkv, k_cache, v_cache, jnp.asarray(starts), jnp.int32(index), rope=rope,
                                      qk_norm=norm, eps=EPS)
    assert out.dtype == k2.dtype == jnp.bfloat16
    k_ref, _, want = expected(qkv, k_cache, v_cache, norm, rope, starts, index)
    np.testing.assert_allclose(np.asarray(k2, np.float64), k_ref, atol=3e-2, rtol=3e-2)
    np.testing.assert_allclose(np.asarray(out, np.float64).reshape(B, KV * 2, H), want, atol=3e-2, rtol=3e-2)


def test_float16_operands_over_a_float8_cache_equal_the_compute_dtype_ones():
    """Over a float8 cache the dots may take float16 operands (Tiling.float8_operands): e4m3 values and the bf16
    queries and probabilities are all exact in float16, so the output is the bf16-operand kernel's, and both
    match the float64 reference over the float8 cache's values."""
    from tipjax.models.cache import to_cache

    qkv, k_cache, v_cache, norm, rope = case(2, 9, jnp.bfloat16)
    k_cache, v_cache = to_cache(k_cache, jnp.float8_e4m3fn), to_cache(v_cache, jnp.float8_e4m3fn)
    starts, index = np.array([0, 10, 40, 70]), 80
    outs = []
    for tiling in (decode_kernel.Tiling(), decode_kernel.Tiling(float8_operands="float16"),
                   decode_kernel.Tiling(float8_operands="float16", transposed=True)):
        out, k2, v2 = decode_kernel.attend(qkv, k_cache, v_cache, jnp.asarray(starts), jnp.int32(index), rope=rope,
                                           qk_norm=norm, eps=EPS, tiling=tiling)
        assert out.dtype == jnp.bfloat16 and k2.dtype == v2.dtype == jnp.float8_e4m3fn
        outs.append(np.asarray(out, np.float64))
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-6)
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-2)  # summed in another order: bf16 output rounding
    _, _, want = expected(qkv, k_cache.astype(jnp.float32), v_cache.astype(jnp.float32), norm, rope, starts, index)
    # the new key and value enter the cache in float8, so they differ from the reference's by e4m3 rounding
    np.testing.assert_allclose(outs[1].reshape(B, KV * 2, H), want, atol=0.15, rtol=0.1)


@pytest.mark.parametrize("groups, head_dim, slots", [(3, 16, 96), (2, 24, 96), (2, 16, 100), (2, 8, 96)])
def test_shapes_triton_cannot_take_are_an_error(groups, head_dim, slots):
    assert not decode_kernel.fits(groups, head_dim, slots, decode_kernel.BLOCK)
    qkv = jnp.zeros((1, 1, groups + 2, head_dim))
    kv = jnp.zeros((1, 1, slots, head_dim))
    with pytest.raises(ValueError, match="power-of-two groups"):
        decode_kernel.attend(qkv, kv, kv, jnp.zeros((1,), jnp.int32), jnp.int32(0))


@pytest.mark.parametrize("groups, splits", [(1, 1), (2, 1), (4, 1), (2, 4)])
@pytest.mark.parametrize("cache_dtype, operands, transposed", [
    (jnp.bfloat16, "", False), (jnp.float8_e4m3fn, "", False), (jnp.float8_e4m3fn, "float16", False),
    (jnp.bfloat16, "", True), (jnp.float8_e4m3fn, "float16", True)])
def test_lowers_to_one_triton_kernel_for_cuda(groups, splits, cache_dtype, operands, transposed):
    """The kernel at the OPD rollout's shapes (norm and rope on) lowers, on this CPU, to one Triton call for an
    H200 (and, with splits, a combine without reductions): Pallas's lowering rules for Triton run here; Triton's
    own compiler runs only on a GPU."""
    b, kv, s, h = 64, 8, 1280, 128
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
        ((b, kv, groups + 2, h), jnp.bfloat16), ((b, kv, s, h), cache_dtype), ((b, kv, s, h), cache_dtype),
        ((b,), jnp.int32), ((), jnp.int32), ((b, h // 2), jnp.float32), ((b, h // 2), jnp.float32),
        ((groups + 1, h), jnp.bfloat16))]

    def run(qkv, k, v, starts, index, cos, sin, norm):
        return decode_kernel.attend(qkv, k, v, starts, index, rope=(cos, sin), qk_norm=norm, interpret=False,
                                    tiling=decode_kernel.Tiling(splits=splits, float8_operands=operands,
                                                                transposed=transposed))

    # An abstract H200 to lower for (jax >= 0.11 asks the device for its compute capability).
    h200 = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h200)):
        text = jax.jit(run, donate_argnums=(1, 2)).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 1
    # Splits are combined by elementwise ops over static slices, no reduction: one XLA loop fusion, not two
    # kernels per layer and step (run I's batch-8 profile: the launches of small kernels are what costs).
    assert "stablehlo.reduce" not in text


def test_under_a_mesh_each_device_runs_its_rows_and_heads():
    """XLA does not partition a Triton call: on a mesh the kernel runs under shard_map (rows over data x fsdp,
    kv heads over tensor) and equals the one-device result, caches included."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from tipjax import models

    qkv, k_cache, v_cache, norm, rope = case(2, 3)
    starts, index = jnp.asarray([0, 5, 33, 60]), jnp.int32(64)
    fn = jax.jit(functools.partial(decode_kernel.attend, eps=EPS))
    want = fn(qkv, k_cache, v_cache, starts, index, rope=rope, qk_norm=norm)
    mesh = models.make_mesh(data=2, fsdp=2, tensor=2)
    slab = NamedSharding(mesh, P(("data", "fsdp"), "tensor", None, None))
    args = [jax.device_put(x, slab) for x in (qkv, k_cache, v_cache)]
    with jax.set_mesh(mesh):
        assert "shard_map" in str(jax.make_jaxpr(fn)(*args, starts, index, rope=rope, qk_norm=norm))
        got = fn(*args, starts, index, rope=rope, qk_norm=norm)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6, rtol=1e-6)


def test_auto_splits_fill_the_gpu_without_splitting_past_the_cache():
    for programs, blocks in [(512, 40), (64, 40), (8, 40), (64, 2), (1, 1), (300, 40)]:
        splits = decode_kernel.auto_splits(programs, blocks)
        assert splits & (splits - 1) == 0 and 1 <= splits <= min(8, max(blocks, 1))
        # never more than needed, and fewer only where the cap or the cache stops it
        assert splits == 1 or programs * splits // 2 < decode_kernel.PROGRAMS
        assert programs * splits >= decode_kernel.PROGRAMS or splits == 8 or 2 * splits > blocks
    assert decode_kernel.auto_splits(64 * 8, 40) == 1 and decode_kernel.auto_splits(8 * 8, 40) == 4


def test_a_jax_without_the_triton_backend_still_imports_and_decodes(tmp_path):
    """jax deprecates Pallas's Triton backend and announces its removal. Without it (the import blocked in a
    fresh process) tipjax imports, the kernel still runs in interpret mode (equal to the float64 reference),
    "auto" takes xla on CUDA, and 'pallas' on a GPU is a one-line config error naming the key."""
    script = textwrap.dedent("""
        import sys
        sys.modules["jax.experimental.pallas.triton"] = None  # as if jax no longer shipped it
        import jax
        import pytest
        import test_decode_kernel as t
        from tipjax import config_checks
        from tipjax.config_loader import ConfigError
        from tipjax.config_schema import ModelSpec
        from tipjax.models import attention, decode_kernel

        assert decode_kernel.TRITON is None
        t.test_attend_equals_reference(2, 64, [0, 5, 33, 60], True)
        assert decode_kernel.missing_here() is None  # CPU: interpret mode
        assert attention.resolve_decode_backend("auto", "cuda", t=1, s=640, head_dim=128, contiguous=True,
                                                triton=decode_kernel.TRITON is not None) == "xla"
        jax.default_backend = lambda: "gpu"
        spec = ModelSpec(preset="Qwen3-0.6B", decode_attention="pallas")
        with pytest.raises(ConfigError) as e:
            config_checks._check_decode_kernel("student", spec, files=False)
        assert "student.decode_attention" in str(e.value) and "Triton backend" in str(e.value), e.value
        print("OK")
    """)
    tests = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, "-c", script], cwd=tests, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tests), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
