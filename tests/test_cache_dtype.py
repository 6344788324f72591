"""A KV cache stored in another dtype than the compute dtype (float8 for the rollout): attention over the rounded
and clipped keys and values against a float64 reference, the sampler carrying float8 buffers, bad dtypes."""

import jax
import jax.numpy as jnp
import jaxpr_walk
import ml_dtypes
import numpy as np
import pytest
from test_decode_paths import reference_decode

from tipjax import models, sampling
from tipjax.models import attention
from tipjax.models.cache import LayerCache, to_cache

FLOAT8 = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}


def rounded(x, name):
    """numpy: clip to the format's finite range, round to it, back to float64."""
    big = float(ml_dtypes.finfo(FLOAT8[name]).max)
    return np.clip(np.asarray(x, np.float64), -big, big).astype(FLOAT8[name]).astype(np.float64)


@pytest.mark.parametrize("name", sorted(FLOAT8))
def test_to_cache_clips_instead_of_overflowing(name):
    x = jnp.asarray([0.3, -2.5, 1e3, -7e4, 3e5], jnp.float32)
    got = to_cache(x, jnp.dtype(name))
    assert got.dtype == jnp.dtype(name) and bool(jnp.all(jnp.isfinite(got.astype(jnp.float32))))
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32), np.float64), rounded(x, name))
    # A plain cast is what this guards against: e4m3fn turns 1e3 into NaN, e5m2 turns 3e5 into inf.
    assert not bool(jnp.all(jnp.isfinite(x.astype(jnp.dtype(name)).astype(jnp.float32))))


@pytest.mark.parametrize("decode_backend", ["xla", "pallas"])
@pytest.mark.parametrize("name", sorted(FLOAT8))
def test_decode_attention_over_a_float8_cache_equals_reference(name, decode_backend):
    """One new token per row over a left-padded float8 cache: the new key/value is clipped and rounded into the
    cache, and attention reads the rounded cache (the new slot included), in the query's dtype."""
    b, kv, s, h = 3, 2, 128, 32
    keys = jax.random.split(jax.random.key(1), 5)
    q = jax.random.normal(keys[0], (b, 1, 4, h))
    k_new, v_new = (jax.random.normal(x, (b, 1, kv, h)) for x in keys[1:3])
    k_new = k_new.at[0, 0, 1, 3].set(2e5)  # beyond both formats' range: clipped, not NaN / inf
    cache_k, cache_v = (to_cache(jax.random.normal(x, (b, kv, s, h)) * 3, jnp.dtype(name)) for x in keys[3:5])
    index, starts = 40, np.array([0, 17, 39])
    mask = (jnp.arange(s)[None] >= starts[:, None]) & (jnp.arange(s)[None] <= index)
    view = LayerCache(k=cache_k, v=cache_v, mask=mask, index=jnp.int32(index),
                      starts=jnp.asarray(starts) if decode_backend == "pallas" else None)
    out, (k_layer, v_layer) = attention.cached_attention(q, k_new, v_new, view, decode_backend=decode_backend)
    assert k_layer.dtype == v_layer.dtype == jnp.dtype(name) and out.dtype == q.dtype

    k_ref = np.asarray(cache_k.astype(jnp.float32), np.float64)
    v_ref = np.asarray(cache_v.astype(jnp.float32), np.float64)
    k_ref[:, :, index] = rounded(np.asarray(k_new)[:, 0], name)
    v_ref[:, :, index] = rounded(np.asarray(v_new)[:, 0], name)
    np.testing.assert_array_equal(np.asarray(k_layer.astype(jnp.float32), np.float64), k_ref)
    want = reference_decode(q[:, 0], k_ref, v_ref, starts, np.full(b, index + 1))
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_allclose(np.asarray(out)[:, 0], want, atol=1e-5, rtol=1e-5)


def test_generate_carries_float8_buffers_and_stays_close():
    """The sampler's loops carry float8 caches; its log-probabilities stay close to a full-precision forward of
    the same tokens (the rounding shows, so the float8 path really ran)."""
    cfg = models.ModelConfig.from_hf_dict({
        "architectures": ["Qwen3ForCausalLM"], "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16})
    model = models.init(cfg, jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 97, (3, 6)), jnp.int32)
    mask = jnp.ones_like(ids)
    settings = sampling.DecodeSettings(prompt_len=6, max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0,
                                       eos_ids=(), pad_id=0, segments=2, steps_per_loop=4)
    jaxpr = jax.make_jaxpr(lambda m, i, k: sampling._generate(m, i, i, k, settings, jnp.float8_e4m3fn))(
        model, ids, jax.random.key(1))
    carried = {str(v.aval) for e in jaxpr_walk.equations(jaxpr) if e.primitive.name == "while" for v in e.invars}
    assert any(a.startswith("float8_e4m3fn[3,2,") for a in carried), sorted(carried)

    gaps = {}
    for dtype in (None, "float8_e4m3fn"):
        out = sampling.generate(model, ids, mask, max_new_tokens=12, rng=jax.random.key(1), cache_dtype=dtype)
        logp = jax.nn.log_softmax(model(out.tokens[:, :-1]), axis=-1)
        want = jnp.take_along_axis(logp, out.tokens[:, 1:, None], axis=-1)[..., 0]
        resp = np.asarray(out.response_mask[:, 1:], bool)
        gaps[dtype] = np.abs(np.asarray(out.logprobs[:, 1:]) - np.asarray(want))[resp].mean()
    assert gaps[None] < 1e-5
    assert 1e-4 < gaps["float8_e4m3fn"] < 5e-2, gaps


def test_bad_cache_dtype_is_one_line_error():
    model = models.init(models.ModelConfig.from_hf_dict({
        "architectures": ["Qwen3ForCausalLM"], "vocab_size": 17, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4}),
        jax.random.key(0))
    ids = jnp.ones((1, 3), jnp.int32)
    for bad in ("int8", "fp8", jnp.float64):
        with pytest.raises(ValueError, match="cache dtype .* is not supported; valid: bfloat16"):
            sampling.generate(model, ids, ids, max_new_tokens=2, rng=jax.random.key(0), cache_dtype=bad)


@pytest.mark.parametrize("groups", [1, 2])
def test_the_trainers_rollout_uses_rollout_kv_cache_dtype(groups):
    """rollout.kv_cache_dtype reaches the sampler inside the step (also through rollout groups' lax.map)."""
    from tipjax import step as step_lib
    from tipjax.config_schema import RolloutSpec, SelectionSpec

    cfg = models.ModelConfig.from_hf_dict({
        "architectures": ["Qwen3ForCausalLM"], "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16})
    model = models.init(cfg, jax.random.key(0))
    ids = jnp.ones((2, 6), jnp.int32)
    carried = {}
    for dtype in ("", "float8_e4m3fn"):
        settings = step_lib.StepSettings(
            rollout=RolloutSpec(samples_per_prompt=2, max_new_tokens=8, groups=groups, kv_cache_dtype=dtype),
            selection=SelectionSpec(), eos_ids=(), vocab=97)
        jaxpr = jax.make_jaxpr(lambda m, i, k: step_lib._rollout(settings, m, i, i, k).tokens)(
            model, ids, jax.random.key(1))
        carried[dtype] = {str(v.aval).split("[")[0] for e in jaxpr_walk.equations(jaxpr)
                          if e.primitive.name == "while" for v in e.invars}
    assert "float8_e4m3fn" in carried["float8_e4m3fn"] and "float8_e4m3fn" not in carried[""]
