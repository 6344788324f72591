"""Query-chunked attention (long sequences) equals one-block attention, in value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from tipjax.models import attention


def _reference(q, k, v, mask):
    """float64 numpy GQA attention."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.asarray(mask)[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def test_chunked_attention_matches_reference_and_gradients():
    t = attention.DEFAULT_QUERY_CHUNK + 77  # two chunks, the second padded
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (1, t, 4, 8))
    k = jax.random.normal(keys[1], (1, t, 2, 8))
    v = jax.random.normal(keys[2], (1, t, 2, 8))
    lengths = np.array([t - 5])
    mask = jnp.asarray(np.tril(np.ones((t, t), bool))[None] & (np.arange(t) < lengths[:, None])[:, None, :])
    spec = attention.AttentionMask(kv_valid=jnp.asarray(np.arange(t) < lengths[:, None]))
    out = attention.attention(q, k, v, spec)
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, mask), atol=2e-5)
    grad_chunked = jax.grad(lambda x: jnp.sum(attention.attention(x, k, v, spec) ** 2))(q)
    k_heads, v_heads = k.swapaxes(1, 2), v.swapaxes(1, 2)  # the block takes heads-major keys and values
    grad_block = jax.grad(lambda x: jnp.sum(attention._attention_block(x, k_heads, v_heads, mask) ** 2))(q)
    np.testing.assert_allclose(np.asarray(grad_chunked), np.asarray(grad_block), atol=1e-5)
