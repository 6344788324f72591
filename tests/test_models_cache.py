"""Prefill then token-by-token decode through the KV cache equals the full (uncached) forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tipjax import models

BASE = {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 101, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


def left_padded(lengths, tp, seed=0):
    rng = np.random.RandomState(seed)
    mask = np.arange(tp)[None] >= tp - np.asarray(lengths)[:, None]
    ids = np.where(mask, rng.randint(1, BASE["vocab_size"], (len(lengths), tp)), 0)
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


@jax.jit
def prefill(model, prompt, positions, cache, mask):
    return model.hidden_cached(prompt, positions, cache, mask)


@jax.jit
def decode(model, token, position, cache):
    return model.hidden_cached(token[:, None], position[:, None], cache, jnp.ones_like(token, jnp.bool_)[:, None])


@pytest.mark.parametrize("arch", ["Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"])
def test_prefill_then_decode_equals_full_forward(arch):
    cfg = models.ModelConfig.from_hf_dict({**BASE, "architectures": [arch]})
    model = models.init(cfg, jax.random.key(1))
    tp, new = 7, 5
    prompt, prompt_mask = left_padded([7, 4, 1], tp)
    continuation = jax.random.randint(jax.random.key(2), (3, new), 0, cfg.vocab_size)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)

    h_prompt, cache = prefill(model, prompt, positions, model.init_cache(3, tp + new), prompt_mask)
    steps = []
    next_pos = positions[:, -1] + 1
    for j in range(new):
        h, cache = decode(model, continuation[:, j], next_pos + j, cache)
        steps.append(h[:, 0])
    assert int(cache.index) == tp + new

    full_ids = jnp.concatenate([prompt, continuation], axis=1)
    full_mask = jnp.concatenate([prompt_mask, jnp.ones((3, new), bool)], axis=1)
    full_pos = jnp.maximum(jnp.cumsum(full_mask, axis=1) - 1, 0)
    ref = model.hidden(full_ids, positions=full_pos, attention_mask=full_mask)
    real = np.asarray(prompt_mask)
    np.testing.assert_allclose(np.asarray(h_prompt)[real], np.asarray(ref[:, :tp])[real], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.stack(steps, 1), ref[:, tp:], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(cache.mask, full_mask)


def test_chunked_prefill_and_bf16_cache():
    """Two prefill chunks (traced index) equal one; a bf16 model's cache is bf16 and stays close to fp32."""
    cfg = models.ModelConfig.from_hf_dict(BASE)
    model = models.init(cfg, jax.random.key(3))
    prompt, mask = left_padded([8, 3], 8, seed=4)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    one, _ = prefill(model, prompt, positions, model.init_cache(2, 8), mask)
    h1, cache = prefill(model, prompt[:, :5], positions[:, :5], model.init_cache(2, 8), mask[:, :5])
    h2, cache = prefill(model, prompt[:, 5:], positions[:, 5:], cache, mask[:, 5:])
    real = np.asarray(mask)
    np.testing.assert_allclose(np.concatenate([h1, h2], 1)[real], np.asarray(one)[real], atol=1e-5)

    bf16 = models.init(cfg.replace(param_dtype="bfloat16", compute_dtype="bfloat16"), jax.random.key(3))
    h_bf16, cache = prefill(bf16, prompt, positions, bf16.init_cache(2, 8), mask)
    assert cache.k[0].dtype == jnp.bfloat16 and h_bf16.dtype == jnp.bfloat16
    assert bf16.logits(h_bf16).dtype == jnp.float32
    err = np.abs(np.asarray(h_bf16, np.float32) - np.asarray(one))[real].max() / np.abs(np.asarray(one)[real]).max()
    assert err < 5e-2
