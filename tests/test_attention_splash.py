"""The TPU splash-attention backend, run in Pallas interpret mode on CPU: it equals the float64 numpy reference
(and the XLA path's gradients) on causal, left-padded and packed-segment self-attention, alone and under a
sharded 2 x 2 x 2 mesh through shard_map; resolution picks it on TPU only where it fits; the decoder runs it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from test_models_attention import dense_numpy, left_padding, qkv, reference
from tipjax import models
from tipjax.models import attention

T, H = 256, 128
VALID = left_padding(4, T, [T, 200, 37, 129])  # row 0 unpadded; the others left padded
SEGMENTS = np.array([[0] * 100 + [1] * 156, [0] * T, [4] * 128 + [5] * 128, [2] * 200 + [3] * 56])


def _mask(valid, segments, causal=True):
    return attention.AttentionMask(kv_valid=None if valid is None else jnp.asarray(valid),
                                   q_segments=None if segments is None else jnp.asarray(segments),
                                   kv_segments=None if segments is None else jnp.asarray(segments), causal=causal)


def _real_rows(valid, b):
    return np.ones((b, T), bool) if valid is None else np.asarray(valid)


@pytest.mark.parametrize("valid, segments, causal", [
    (VALID, None, True), (None, SEGMENTS, True), (VALID, SEGMENTS, True), (VALID, None, False),
], ids=["left_pad", "segments", "left_pad_and_segments", "bidirectional_pad"])
def test_splash_equals_the_reference_on_real_queries(valid, segments, causal):
    q, k, v = qkv(4, T, T, n=4, kv=2, h=H, seed=3)
    out = attention.attention(q, k, v, _mask(valid, segments, causal), backend="splash")
    want = reference(q, k, v, dense_numpy(4, T, T, causal=causal, valid=valid, q_seg=segments, kv_seg=segments))
    real = _real_rows(valid, 4)  # a pad query's output is read by nothing (splash: pad keys; xla: uniform)
    np.testing.assert_allclose(np.asarray(out)[real], want[real], rtol=1e-5, atol=1e-5)


def test_splash_gradients_equal_the_xla_path():
    q, k, v = qkv(4, T, T, n=4, kv=2, h=H, seed=5)
    mask, real = _mask(VALID, SEGMENTS), jnp.asarray(VALID)[:, :, None, None]
    weights = jax.random.normal(jax.random.key(9), q.shape)

    def loss(backend):
        return lambda q, k, v: jnp.sum(jnp.where(real, attention.attention(q, k, v, mask, backend=backend), 0) * weights)

    got = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5, err_msg=f"d{name}")


def test_splash_under_a_mesh_runs_per_shard_and_equals_one_device():
    q, k, v = qkv(4, T, T, n=4, kv=2, h=H, seed=7)
    mask = _mask(VALID, SEGMENTS)
    one_device = attention.attention(q, k, v, mask, backend="splash")
    mesh = models.make_mesh(data=2, fsdp=2, tensor=2)
    act = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    q, k, v = (jax.device_put(x, act) for x in (q, k, v))
    with jax.set_mesh(mesh):
        f = jax.jit(lambda q, k, v, m: attention.attention(q, k, v, m, backend="splash"))
        sharded = f(q, k, v, mask)
        assert "shard_map" in str(jax.make_jaxpr(f)(q, k, v, mask))  # Mosaic kernels are not auto-partitioned
    real = _real_rows(VALID, 4)
    np.testing.assert_allclose(np.asarray(sharded)[real], np.asarray(one_device)[real], rtol=1e-6, atol=1e-6)


def test_resolution_picks_splash_on_tpu_only_where_it_fits():
    resolve = attention.resolve_backend
    assert resolve("auto", "tpu", jnp.bfloat16, 128, t=256, s=256) == "splash"
    assert resolve("auto", "tpu", jnp.float32, 128, t=1024, s=1024) == "splash"
    for kwargs in (dict(t=200, s=200), dict(t=128, s=256), dict(t=256, s=256, q_offset=True)):
        assert resolve("auto", "tpu", jnp.bfloat16, 128, **kwargs) == "xla", kwargs
    assert resolve("auto", "tpu", jnp.bfloat16, 64, t=256, s=256) == "xla"  # head_dim below the TPU lane width
    assert resolve("auto", "cpu", jnp.float32, 128, t=256, s=256) == "xla"
    assert resolve("auto", "cuda", jnp.bfloat16, 128, t=256, s=256) == "cudnn"
    assert resolve("splash", "cpu", jnp.float32, 128, t=256, s=256) == "splash"  # interpret mode
    with pytest.raises(ValueError, match="attention='splash' needs a TPU"):
        resolve("splash", "cuda", jnp.bfloat16, 128, t=256, s=256)
    with pytest.raises(ValueError, match="t=1, s=512"):
        resolve("splash", "tpu", jnp.bfloat16, 128, t=1, s=512, q_offset=True)


def test_decoder_with_splash_gives_the_xla_logits_on_left_padded_prompts():
    arch = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=97, hidden_size=64,
                intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=512, tie_word_embeddings=False)
    cfg = models.ModelConfig.from_hf_dict(arch)
    ids = jax.random.randint(jax.random.key(1), (2, 128), 3, 97)
    mask = jnp.asarray(left_padding(2, 128, [128, 77]))
    positions = models.positions_from_mask(mask)
    logits = {}
    for backend in ("xla", "splash"):
        m = models.init(cfg.replace(attention=backend), jax.random.PRNGKey(0))  # the same weights
        logits[backend] = np.asarray(m(ids, positions=positions, attention_mask=mask))
    real = np.asarray(mask)
    np.testing.assert_allclose(logits["splash"][real], logits["xla"][real], rtol=1e-4, atol=1e-4)


def test_splash_forward_and_backward_lower_to_tpu_kernels_sharded_or_not(monkeypatch):
    """Without a TPU: the compiled (not interpret) Pallas -> Mosaic lowering accepts tipjax's shapes and block
    sizes at a real model's size (bf16, 16 q / 8 kv heads of 128, 1024 tokens), forward and both backward
    kernels, alone and under shard_map on a 2 x 2 x 2 mesh."""
    monkeypatch.setattr(attention, "current_platform", lambda: "tpu")
    b, t = 4, 1024
    args = (jax.ShapeDtypeStruct((b, t, 16, H), jnp.bfloat16), jax.ShapeDtypeStruct((b, t, 8, H), jnp.bfloat16),
            jax.ShapeDtypeStruct((b, t, 8, H), jnp.bfloat16), jax.ShapeDtypeStruct((b, t), jnp.bool_))

    def loss(q, k, v, valid):
        out = attention.attention(q, k, v, attention.AttentionMask(kv_valid=valid), backend="auto")
        return out.astype(jnp.float32).sum()

    grads = jax.jit(lambda *a: jax.grad(loss, argnums=(0, 1, 2))(*a))
    text = grads.trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3  # forward, dq, dkv
    with jax.set_mesh(models.make_mesh(data=2, fsdp=2, tensor=2)):
        text = grads.trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3 and "manual_computation" in text


def test_a_kernel_first_built_inside_a_trace_serves_later_traces():
    """The cached splash kernel built while tracing a layer scan holds concrete mask arrays, not that trace's
    tracers: the next call at the same shape (eager here, any later jit in the trainer) runs and agrees."""
    from tipjax.models import splash

    splash._kernel.cache_clear()
    q, k, v = qkv(2, 128, 128, n=2, kv=1, h=H, seed=5)
    mask = _mask(None, None)

    def scanned(q, k, v):  # the decoder's layer scan, one layer
        return jax.lax.scan(lambda c, _: (attention.attention(c, k, v, mask, backend="splash"), None), q, None,
                            length=1)[0]

    first = jax.jit(scanned)(q, k, v)
    again = attention.attention(q, k, v, mask, backend="splash")
    np.testing.assert_allclose(np.asarray(again), np.asarray(first), rtol=1e-6, atol=1e-6)
