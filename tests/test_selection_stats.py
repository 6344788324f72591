"""Statistics (Eq. 2, 3, forward KL, jsd, teacher diagnostics) against float64 numpy restatements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_selection_reference as ref

from tipjax import selection

KEYS = ("entropy", "rkl", "fkl", "teacher_entropy", "jsd", "teacher_token_prob")


def random_logits(rng, shape, scale=3.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def test_token_stats_large_vocab_matches_float64():
    rng = np.random.default_rng(0)
    b, t, v = 1, 3, 50_000
    s, te = random_logits(rng, (b, t, v)), random_logits(rng, (b, t, v))
    tokens = rng.integers(0, v, (b, t))
    got = selection.token_stats(s, te, np.ones((b, t)), tokens=tokens, beta=0.3)
    want = ref.stats(s, te, beta=0.3, tokens=tokens)
    for k in KEYS:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-4, atol=1e-6, err_msg=k)
        assert got[k].dtype == jnp.float32 and got[k].shape == (b, t)


def test_token_stats_masked_positions_are_zero_even_if_non_finite():
    rng = np.random.default_rng(1)
    s, te = random_logits(rng, (2, 5, 11)), random_logits(rng, (2, 5, 11))
    mask = np.array([[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]])
    s[0, 0] = np.nan
    te[1, 4] = np.inf
    got = selection.token_stats(s, te, mask)
    want = ref.stats(s, te)
    for k in ("entropy", "rkl", "fkl", "jsd"):
        assert np.all(np.asarray(got[k])[mask == 0] == 0.0)
        np.testing.assert_allclose(np.asarray(got[k])[mask == 1], want[k][mask == 1], rtol=1e-5, atol=1e-6)


def test_token_stats_with_minus_inf_logits():
    """Vocabulary entries with -inf logits (zero probability in both models) contribute nothing, never NaN."""
    rng = np.random.default_rng(2)
    s, te = random_logits(rng, (1, 4, 9)), random_logits(rng, (1, 4, 9))
    s[..., -3:] = -np.inf
    te[..., -3:] = -np.inf
    got = selection.token_stats(s, te, np.ones((1, 4)))
    want = ref.stats(s, te)
    for k in ("entropy", "rkl", "fkl", "jsd", "teacher_entropy"):
        assert np.all(np.isfinite(np.asarray(got[k])))
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, atol=1e-6)


def test_entropy_is_normalised_to_unit_interval():
    v = 64
    uniform = np.zeros((1, 2, v), np.float32)
    peaked = uniform.copy()
    peaked[0, 1, 3] = 1e4
    got = selection.token_stats(uniform, peaked, np.ones((1, 2)))
    np.testing.assert_allclose(np.asarray(got["entropy"]), [[1.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got["teacher_entropy"]), [[1.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 5, 512])
def test_hidden_stats_equal_logit_stats(chunk_size):
    rng = np.random.default_rng(3)
    b, t, ds, dt, v = 2, 7, 6, 10, 37
    hs, ht = rng.standard_normal((b, t, ds)), rng.standard_normal((b, t, dt))
    ws, wt = rng.standard_normal((ds, v)), rng.standard_normal((dt, v))
    mask = np.ones((b, t)); mask[0, :2] = 0; mask[1, -3:] = 0
    tokens = rng.integers(0, v, (b, t))
    hs, ht, ws, wt = (x.astype(np.float32) for x in (hs, ht, ws, wt))
    got = selection.token_stats_from_hidden(hs, ws, ht, wt, mask, chunk_size=chunk_size, tokens=tokens)
    want = ref.stats(hs.astype(np.float64) @ ws, ht.astype(np.float64) @ wt, tokens=tokens)
    for k in KEYS:
        np.testing.assert_allclose(np.asarray(got[k]), np.where(mask > 0, want[k], 0.0), rtol=1e-4, atol=1e-5, err_msg=k)


def test_hidden_stats_bf16_inputs_accumulate_in_fp32():
    rng = np.random.default_rng(4)
    b, t, d, v = 1, 9, 32, 300
    hs, ht = (jnp.asarray(rng.standard_normal((b, t, d)), jnp.bfloat16) for _ in range(2))
    ws, wt = (jnp.asarray(rng.standard_normal((d, v)) / 4, jnp.bfloat16) for _ in range(2))
    got = selection.token_stats_from_hidden(hs, ws, ht, wt, np.ones((b, t)), chunk_size=4)
    f64 = [np.asarray(x.astype(jnp.float32), np.float64) for x in (hs, ws, ht, wt)]
    want = ref.stats(f64[0] @ f64[1], f64[2] @ f64[3])
    for k in ("entropy", "rkl", "fkl"):
        assert got[k].dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_stats_are_stop_gradient():
    rng = np.random.default_rng(5)
    hs, ws = jnp.asarray(rng.standard_normal((1, 3, 4)), jnp.float32), jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)

    def total(h, w):
        st = selection.token_stats_from_hidden(h, w, h, w * 2, jnp.ones((1, 3)), chunk_size=2)
        return sum(jnp.sum(v) for v in st.values())

    grads = jax.grad(total, argnums=(0, 1))(hs, ws)
    assert all(np.all(np.asarray(g) == 0) for g in grads)
