"""Divergences rkl, fkl, jsd(beta) against float64 numpy, their documented limits, and -inf safety."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_selection_reference as ref

from tipjax import selection


def pair(seed, shape=(3, 4, 29), scale=2.0):
    rng = np.random.default_rng(seed)
    return tuple((scale * rng.standard_normal(shape)).astype(np.float32) for _ in range(2))


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_divergences_match_float64(beta):
    s, t = pair(0)
    want = ref.stats(s, t, beta=beta)
    np.testing.assert_allclose(np.asarray(selection.rkl(s, t)), want["rkl"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(selection.fkl(s, t)), want["fkl"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(selection.jsd(s, t, beta)), want["jsd"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(selection.divergence("jsd", s, t, beta=beta)), want["jsd"], rtol=1e-4, atol=1e-6
    )


def test_rkl_and_fkl_are_each_others_swap_and_vanish_on_equal_inputs():
    s, t = pair(1)
    np.testing.assert_allclose(np.asarray(selection.rkl(s, t)), np.asarray(selection.fkl(t, s)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(selection.rkl(s, s)), 0.0, atol=1e-6)
    assert np.all(np.asarray(selection.rkl(s, t)) > 0)


def test_jsd_end_points_are_zero_and_half_is_bounded_by_ln2():
    s, t = pair(2, scale=6.0)
    np.testing.assert_allclose(np.asarray(selection.jsd(s, t, 0.0)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(selection.jsd(s, t, 1.0)), 0.0, atol=1e-6)
    half = np.asarray(selection.jsd(s, t, 0.5))
    assert np.all(half > 0) and np.all(half <= np.log(2) + 1e-6)
    np.testing.assert_allclose(half, np.asarray(selection.jsd(t, s, 0.5)), rtol=1e-5)


def test_jsd_scaled_limits_are_the_kls():
    """Documented: jsd / beta -> fkl as beta -> 0 and jsd / (1 - beta) -> rkl as beta -> 1."""
    s, t = pair(3, scale=1.0)
    eps = 1e-3
    np.testing.assert_allclose(
        np.asarray(selection.jsd(s, t, eps)) / eps, np.asarray(selection.fkl(s, t)), rtol=3e-2
    )
    np.testing.assert_allclose(
        np.asarray(selection.jsd(s, t, 1 - eps)) / eps, np.asarray(selection.rkl(s, t)), rtol=3e-2
    )
    # The limit is approached at first order: halving eps halves the gap.
    gap = [np.abs(np.asarray(selection.jsd(s, t, e)) / e - np.asarray(selection.fkl(s, t))) for e in (2e-2, 1e-2)]
    assert np.all(gap[1] < 0.6 * gap[0])


def test_disjoint_supports_give_finite_jsd_and_infinite_kl():
    s = np.array([[0.0, 0.0, -np.inf, -np.inf]], np.float32)
    t = np.array([[-np.inf, -np.inf, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(selection.jsd(s, t, 0.5)), np.log(2), rtol=1e-6)
    assert np.isinf(np.asarray(selection.rkl(s, t))).all()
    assert np.asarray(selection.jsd(s, t, 0.0)) == 0 and np.asarray(selection.jsd(s, t, 1.0)) == 0


@pytest.mark.parametrize("name", ["rkl", "fkl", "jsd"])
def test_gradients_finite_with_masked_vocabulary(name):
    """-inf logits shared by both models (a padded vocabulary) give finite values and gradients."""
    s, t = pair(4, shape=(2, 12))
    s[:, -4:] = -np.inf
    t[:, -4:] = -np.inf

    def total(x, y):
        return jnp.sum(selection.divergence(name, x, y, beta=0.3))

    value = total(s, t)
    grads = jax.grad(total, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    s64 = np.where(np.isfinite(s), s, -1e30)
    want = {"rkl": ref.stats(s64, t)["rkl"], "fkl": ref.stats(s64, t)["fkl"], "jsd": ref.stats(s64, t, 0.3)["jsd"]}[name]
    np.testing.assert_allclose(float(value), want.sum(), rtol=1e-5)


def test_rkl_gradient_matches_closed_form():
    """d KL(P_S || P_T) / d z_S = P_S * (log P_S - log P_T - KL)."""
    s, t = pair(5, shape=(3, 17))
    grad = np.asarray(jax.grad(lambda x: jnp.sum(selection.rkl(x, t)))(jnp.asarray(s)))
    ls, lt = ref.log_softmax(s), ref.log_softmax(t)
    want = np.exp(ls) * (ls - lt - ref.kl(ls, lt)[:, None])
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)


def test_unknown_divergence_lists_the_valid_ones():
    s, t = pair(6)
    with pytest.raises(ValueError, match="divergence='kl'.*rkl, fkl, jsd"):
        selection.divergence("kl", s, t)
