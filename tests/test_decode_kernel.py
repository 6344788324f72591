"""tipjax's Pallas decode kernel (decode_kernel.write_and_attend, interpret mode on CPU): the cache write and the
attention over each row's filled slots against numpy and a float64 reference; its lowering to Triton."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_decode_paths import reference_decode

from tipjax.models import decode_kernel

B, KV, S, H = 4, 2, 96, 16  # three blocks of 32 slots


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("index, starts", [
    (64, [0, 5, 33, 60]),     # ranges from the first slot, inside a block, across blocks, in the last block
    (31, [0, 31, 30, 1]),     # the new slot ends block 0; a row that sees only its new slot
    (0, [0, 0, 0, 0]),        # the first decode step of an empty cache: only the new slot
])
def test_write_and_attend_equals_reference(groups, index, starts):
    keys = jax.random.split(jax.random.key(groups + index), 5)
    q = jax.random.normal(keys[0], (B, KV, groups, H))
    k_new, v_new = (jax.random.normal(x, (B, KV, H)) for x in keys[1:3])
    k_cache, v_cache = (jax.random.normal(x, (B, KV, S, H)) for x in keys[3:5])
    starts = np.asarray(starts)
    out, k2, v2 = jax.jit(decode_kernel.write_and_attend)(q, k_new, v_new, k_cache, v_cache, jnp.asarray(starts),
                                                           jnp.int32(index))
    k_ref, v_ref = np.array(k_cache), np.array(v_cache)
    k_ref[:, :, index], v_ref[:, :, index] = k_new, v_new
    np.testing.assert_array_equal(k2, k_ref)  # only slot `index` changed
    np.testing.assert_array_equal(v2, v_ref)
    want = reference_decode(q.reshape(B, KV * groups, H), k_ref, v_ref, starts, np.full(B, index + 1))
    np.testing.assert_allclose(np.asarray(out).reshape(B, KV * groups, H), want, atol=1e-5, rtol=1e-5)


def test_bf16_queries_and_cache_stay_close_and_keep_dtypes():
    keys = jax.random.split(jax.random.key(7), 5)
    q = jax.random.normal(keys[0], (B, KV, 2, H), jnp.bfloat16)
    k_new, v_new = (jax.random.normal(x, (B, KV, H), jnp.bfloat16) for x in keys[1:3])
    k_cache, v_cache = (jax.random.normal(x, (B, KV, S, H), jnp.bfloat16) for x in keys[3:5])
    starts, index = np.array([0, 10, 40, 70]), 80
    out, k2, _ = decode_kernel.write_and_attend(q, k_new, v_new, k_cache, v_cache, jnp.asarray(starts),
                                                jnp.int32(index))
    assert out.dtype == k2.dtype == jnp.bfloat16
    k_ref, v_ref = np.asarray(k_cache, np.float64).copy(), np.asarray(v_cache, np.float64).copy()
    k_ref[:, :, index], v_ref[:, :, index] = np.asarray(k_new, np.float64), np.asarray(v_new, np.float64)
    want = reference_decode(np.asarray(q, np.float64).reshape(B, KV * 2, H), k_ref, v_ref, starts,
                            np.full(B, index + 1))
    np.testing.assert_allclose(np.asarray(out, np.float64).reshape(B, KV * 2, H), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("groups, head_dim, slots", [(3, 16, 96), (2, 24, 96), (2, 16, 100), (2, 8, 96)])
def test_shapes_triton_cannot_take_are_an_error(groups, head_dim, slots):
    assert not decode_kernel.fits(groups, head_dim, slots)
    q = jnp.zeros((1, 1, groups, head_dim))
    kv = jnp.zeros((1, 1, slots, head_dim))
    with pytest.raises(ValueError, match="power-of-two groups"):
        decode_kernel.write_and_attend(q, q[:, :, 0], q[:, :, 0], kv, kv, jnp.zeros((1,), jnp.int32), jnp.int32(0))


@pytest.mark.parametrize("cache_dtype", [jnp.bfloat16, jnp.float8_e4m3fn])
def test_lowers_to_one_triton_kernel_for_cuda(cache_dtype):
    """The kernel at the OPD rollout's shapes lowers, on this CPU, to a Triton call for CUDA (Pallas's lowering
    rules for Triton; Triton's own compiler runs only on a GPU)."""
    b, kv, g, s, h = 64, 8, 2, 1280, 128
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
        ((b, kv, g, h), jnp.bfloat16), ((b, kv, h), jnp.bfloat16), ((b, kv, h), jnp.bfloat16),
        ((b, kv, s, h), cache_dtype), ((b, kv, s, h), cache_dtype), ((b,), jnp.int32), ((), jnp.int32))]
    fn = jax.jit(functools.partial(decode_kernel.write_and_attend, interpret=False), donate_argnums=(3, 4))
    try:
        text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    except RuntimeError as err:  # jax >= 0.11 wants a GPU (or an abstract one) to lower for
        if "No supported GPU devices found" not in str(err):
            raise
        pytest.skip(f"this jax cannot lower Pallas to Triton without a GPU: {err}")
    assert text.count("__gpu$xla.gpu.triton") == 1
