"""The structured-mask attention interface: every backend runnable on CPU equals a float64 numpy reference
built from an independently written dense mask; backend resolution; the decoder's backend/chunk settings."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tipjax import models
from tipjax.models import attention
from tipjax.models.cache import LayerCache


def reference(q, k, v, visible):
    """float64 numpy GQA attention; a row with no visible key averages all values (finite -1e30 masking)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.asarray(visible)[:, None], scores, -1e30)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def dense_numpy(b, t, s, *, causal=True, offset=0, valid=None, q_seg=None, kv_seg=None):
    """The visibility rule of AttentionMask's docstring, as loops over (row, query, slot)."""
    out = np.zeros((b, t, s), bool)
    for r in range(b):
        for j in range(t):
            for slot in range(s):
                ok = (not causal or slot <= offset + j) and (valid is None or valid[r, slot])
                ok = ok and (q_seg is None or q_seg[r, j] == kv_seg[r, slot])
                out[r, j, slot] = ok
    return out


def qkv(b, t, s, n=4, kv=2, h=8, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (b, t, n, h), dtype), jax.random.normal(keys[1], (b, s, kv, h), dtype),
            jax.random.normal(keys[2], (b, s, kv, h), dtype))


def left_padding(b, s, lengths):
    return np.arange(s)[None] >= s - np.asarray(lengths)[:, None]


CASES = {
    # self-attention, left padding (rows 1 and 2 have fully masked padding queries)
    "causal_left_pad": dict(t=9, s=9, valid=left_padding(3, 9, [9, 4, 1])),
    "causal_plain": dict(t=9, s=9),
    "bidirectional_pad": dict(t=5, s=9, causal=False, valid=left_padding(3, 9, [9, 6, 2])),
    # three new queries at cache slot 5 of 12; slots past the written ones are invalid
    "cache_offset": dict(t=3, s=12, offset=5, valid=np.arange(12)[None].repeat(3, 0) < 8),
    "cache_decode": dict(t=1, s=12, offset=6, valid=(np.arange(12) < 7)[None].repeat(3, 0)),
    "segments": dict(t=8, s=8, q_seg=np.array([[0] * 3 + [1] * 5, [0] * 8, [2] * 4 + [3] * 4]),
                     kv_seg=np.array([[0] * 3 + [1] * 5, [0] * 8, [2] * 4 + [3] * 4])),
}


def structured(case):
    def array(key):
        return None if case.get(key) is None else jnp.asarray(case[key])

    return attention.AttentionMask(kv_valid=array("valid"), q_offset=array("offset"), q_segments=array("q_seg"),
                                   kv_segments=array("kv_seg"), causal=case.get("causal", True))


@pytest.mark.parametrize("backend", ["xla", "xla_sdpa"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_backends_match_reference(name, backend):
    case = CASES[name]
    t, s = case["t"], case["s"]
    q, k, v = qkv(3, t, s)
    visible = dense_numpy(3, t, s, causal=case.get("causal", True), offset=case.get("offset", 0),
                          valid=case.get("valid"), q_seg=case.get("q_seg"), kv_seg=case.get("kv_seg"))
    mask = structured(case)
    expected = reference(q, k, v, visible)
    out = jax.jit(attention.attention, static_argnames=("backend", "query_chunk"))(q, k, v, mask, backend=backend)
    assert out.shape == q.shape and np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-6, rtol=1e-5)
    np.testing.assert_array_equal(np.broadcast_to(np.asarray(mask.dense(t, s)), (3, t, s)), visible)


@pytest.mark.parametrize("name", ["causal_left_pad", "segments", "cache_offset"])
def test_query_chunks_match_one_block(name):
    """Small chunks (the last one padded) give the one-block values and gradients."""
    case = CASES[name]
    q, k, v = qkv(3, case["t"], case["s"], seed=1)
    mask = structured(case)

    def loss(q, chunk):
        return jnp.sum(attention.attention(q, k, v, mask, query_chunk=chunk) ** 2)

    for chunk in (2, 3):
        np.testing.assert_allclose(attention.attention(q, k, v, mask, query_chunk=chunk),
                                   attention.attention(q, k, v, mask), atol=1e-6)
        np.testing.assert_allclose(jax.grad(loss)(q, chunk), jax.grad(loss)(q, 1024), atol=1e-5)


def test_cached_attention_fresh_equals_full_read():
    """fresh (new keys only) reads the same keys as the full cache would."""
    b, t, s = 2, 4, 10
    q, k, v = qkv(b, t, t, seed=2)
    valid = jnp.asarray(left_padding(b, t, [4, 2]))
    kv_mask = jnp.zeros((b, s), bool).at[:, :t].set(valid)
    zeros = jnp.zeros((b, 2, s, 8))
    base = dict(k=zeros, v=zeros, mask=kv_mask, index=jnp.int32(0))
    outs = {name: attention.cached_attention(q, k, v, LayerCache(**base, **extra))
            for name, extra in [("full", {}), ("fresh", dict(fresh=True))]}
    real = np.asarray(valid)  # padding queries see no key: uniform over however many slots were read
    np.testing.assert_allclose(np.asarray(outs["fresh"][0])[real], np.asarray(outs["full"][0])[real], atol=1e-6)
    k_layer = np.asarray(outs["fresh"][1][0])  # heads-major [B, K, S, H]
    np.testing.assert_array_equal(k_layer[:, :, :t], np.asarray(k).swapaxes(1, 2))
    assert not k_layer[:, :, t:].any()
    expected = reference(q, k, v, dense_numpy(b, t, t, valid=np.asarray(valid)))
    np.testing.assert_allclose(np.asarray(outs["fresh"][0]), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("requested, platform, dtype, head_dim, extra, expected", [
    ("auto", "cpu", "bfloat16", 128, {}, "xla"),
    ("auto", "tpu", "bfloat16", 128, {}, "xla"),
    ("auto", "rocm", "bfloat16", 128, {}, "xla"),
    ("auto", "cuda", "float32", 128, {}, "xla"),             # cuDNN flash attention is bf16/fp16 only
    ("auto", "cuda", "bfloat16", 128, {}, "cudnn"),
    ("auto", "cuda", "float16", 64, {}, "cudnn"),
    ("auto", "cuda", "bfloat16", 100, {}, "xla"),            # head_dim not a multiple of 8
    ("auto", "cuda", "bfloat16", 256, {}, "xla"),            # over the pre-Hopper limit
    ("auto", "cuda", "bfloat16", 128, dict(dense_mask=True, t=1, s=64), "xla"),   # odd T with a bias
    ("auto", "cuda", "bfloat16", 128, dict(dense_mask=True, t=64, s=64), "cudnn"),
    ("auto", "cuda", "bfloat16", 128, dict(dense_mask=False, t=1, s=1), "cudnn"),
    ("xla", "cuda", "bfloat16", 128, {}, "xla"),
    ("xla_sdpa", "cpu", "float32", 8, {}, "xla_sdpa"),
    ("cudnn", "cuda", "bfloat16", 128, {}, "cudnn"),
])
def test_resolve_backend(requested, platform, dtype, head_dim, extra, expected):
    assert attention.resolve_backend(requested, platform, dtype, head_dim, **extra) == expected


@pytest.mark.parametrize("requested, platform, dtype, message", [
    ("cudnn", "cpu", "bfloat16", "platform 'cpu'"),
    ("cudnn", "cuda", "float32", "float32"),
    ("flash", "cuda", "bfloat16", "'flash'"),
])
def test_resolve_backend_errors(requested, platform, dtype, message):
    with pytest.raises(ValueError, match=message):
        attention.resolve_backend(requested, platform, dtype, 128)


def test_explicit_cudnn_on_cpu_is_a_clear_error():
    q, k, v = qkv(1, 4, 4, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="attention='cudnn' needs a CUDA GPU"):
        attention.attention(q, k, v, attention.AttentionMask(), backend="cudnn")


HF = {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 101, "hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


def test_decoder_backends_and_chunks_agree():
    cfg = models.ModelConfig.from_hf_dict(HF)
    model = models.init(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (3, 11), 0, cfg.vocab_size)
    mask = jnp.asarray(left_padding(3, 11, [11, 6, 1]))
    positions = models.positions_from_mask(mask)
    ref = model(ids, positions=positions, attention_mask=mask)
    for changes in (dict(attention="xla_sdpa"), dict(query_chunk=4), dict(attention="auto")):
        other = models.init(cfg.replace(**changes), jax.random.key(0))
        out = other(ids, positions=positions, attention_mask=mask)
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5, err_msg=str(changes))


def test_positions_from_mask():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1], [0, 1, 1, 0, 0]])
    expected = np.zeros_like(mask)
    for r, row in enumerate(mask):
        first = np.argmax(row)
        count = -1
        for col, m in enumerate(row):
            count += bool(m) and col >= first
            expected[r, col] = max(count, 0)
    out = models.positions_from_mask(jnp.asarray(mask))
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(models.positions_from_mask(jnp.asarray(mask, bool)), expected)


def test_block_stages_are_named_in_the_program():
    cfg = models.ModelConfig.from_hf_dict(HF)
    model = models.init(cfg, jax.random.key(0))
    text = jax.jit(type(model).hidden).lower(model, jnp.zeros((1, 4), jnp.int32)).as_text(debug_info=True)
    for stage in ("attn_norm", "qkv", "rope", "attention", "out_proj", "mlp"):
        assert re.search(rf'loc\("([^"]*/)?{stage}/', text), stage
