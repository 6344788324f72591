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


# How many slots the cache has before each decode step: allocated whole, or grown as the sampler does.
GROWTH = {"whole": {0: 12}, "grown": {0: 9, 2: 10, 3: 12}}


@pytest.mark.parametrize("growth", sorted(GROWTH))
@pytest.mark.parametrize("arch", ["Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"])
def test_prefill_then_decode_equals_full_forward(arch, growth):
    cfg = models.ModelConfig.from_hf_dict({**BASE, "architectures": [arch]})
    model = models.init(cfg, jax.random.key(1))
    tp, new = 7, 5
    prompt, prompt_mask = left_padded([7, 4, 1], tp)
    continuation = jax.random.randint(jax.random.key(2), (3, new), 0, cfg.vocab_size)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)

    slots = GROWTH[growth]
    h_prompt, cache = prefill(model, prompt, positions, model.init_cache(3, tp if growth == "grown" else tp + new),
                              prompt_mask)
    steps = []
    next_pos = positions[:, -1] + 1
    for j in range(new):
        if j in slots:
            before = cache
            cache = cache.grow(slots[j])
            assert cache.max_len == slots[j] and cache.k[0].shape[2] == slots[j]
            np.testing.assert_array_equal(np.asarray(cache.k[1])[:, :, :before.max_len], before.k[1])
            assert not np.asarray(cache.mask)[:, before.max_len:].any()
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


def test_cache_cannot_shrink():
    cache = models.KVCache.zeros(2, 1, 8, 2, 4, jnp.float32)
    assert cache.grow(8) is cache
    with pytest.raises(ValueError, match="cannot shrink a KVCache from 8 to 6 slots"):
        cache.grow(6)
