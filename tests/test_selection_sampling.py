"""Sampling rules (random, entropy_sample): exact counts, no duplicates, and inclusion frequencies (seeded)."""

import jax
import jax.numpy as jnp
import numpy as np
import test_selection_reference as ref

from tipjax import selection
from tipjax.selection import SelectionOptions

N_DRAWS = 4000
Z = 4.5  # per-position z-score bound; seeded, so a failure is a real bias


def draws(rule, st, mask, ratio, options=SelectionOptions()):
    def one(key):
        return selection.select_weighted(rule, st, mask, ratio, key, options=options)

    keys = jax.random.split(jax.random.PRNGKey(1234), N_DRAWS)
    out = jax.jit(jax.vmap(one))(keys)
    return np.asarray(out.idx), np.asarray(out.valid), np.asarray(out.weight)


def inclusion(idx, valid, t):
    """[draws, B, K] -> [B, T] fraction of draws that kept each position."""
    counts = np.zeros((idx.shape[1], t))
    for row in range(idx.shape[1]):
        np.add.at(counts[row], idx[:, row][valid[:, row]], 1)
    return counts / idx.shape[0]


def check_structure(idx, valid, mask, ratio):
    for d in range(0, idx.shape[0], 97):
        for row in range(idx.shape[1]):
            kept = idx[d, row][valid[d, row]]
            m = int(mask[row].sum())
            assert len(kept) == ref.keep_count(ratio, m)
            assert len(set(kept.tolist())) == len(kept)
            assert np.all(mask[row, kept] > 0)


def test_random_is_uniform_without_replacement():
    t = 16
    mask = np.zeros((3, t), np.float32)
    mask[0, 2:10] = 1
    mask[1, 5:16] = 1
    mask[2, 0:3] = 1
    st = {k: np.random.default_rng(0).uniform(size=(3, t)).astype(np.float32) for k in ("entropy", "rkl", "fkl")}
    idx, valid, _ = draws("random", st, mask, 0.5, )
    check_structure(idx, valid, mask, 0.5)
    freq = inclusion(idx, valid, t)
    for row in range(3):
        m = int(mask[row].sum())
        p = ref.keep_count(0.5, m) / m
        sigma = np.sqrt(p * (1 - p) / N_DRAWS)
        np.testing.assert_array_less(np.abs(freq[row][mask[row] > 0] - p), Z * sigma + 1e-12)
        assert np.all(freq[row][mask[row] == 0] == 0)


def test_entropy_sample_matches_successive_sampling_probabilities():
    t = 9
    h = np.array([[0.9, 0.05, 0.1, 0.2, 0.3, 0.35, 0.8, 0.7, 0.6]], np.float32)
    mask = np.array([[0, 1, 1, 1, 1, 1, 0, 0, 0]], np.float32)  # high entropy outside the mask must never be drawn
    st = {"entropy": h, "rkl": np.ones_like(h), "fkl": np.ones_like(h)}
    idx, valid, _ = draws("entropy_sample", st, mask, 0.4)  # m = 5, k = 2
    check_structure(idx, valid, mask, 0.4)
    pos = np.flatnonzero(mask[0])
    want = ref.inclusion_probabilities(h[0, pos], 2)
    freq = inclusion(idx, valid, t)[0]
    sigma = np.sqrt(want * (1 - want) / N_DRAWS)
    np.testing.assert_array_less(np.abs(freq[pos] - want), Z * sigma)
    assert np.all(freq[mask[0] == 0] == 0)
    # The first slot is the first draw: p_t proportional to h_t.
    first = np.bincount(idx[:, 0, 0], minlength=t)[pos] / N_DRAWS
    p = h[0, pos] / h[0, pos].sum()
    np.testing.assert_array_less(np.abs(first - p), Z * np.sqrt(p * (1 - p) / N_DRAWS))


def test_entropy_sample_importance_weights_are_unbiased():
    """With 1/q_t weights, sum over kept of w_t * l_t estimates the sum over all tokens (App. A.3)."""
    rng = np.random.default_rng(3)
    t = 12
    h = rng.uniform(0.02, 1.0, (2, t)).astype(np.float32)
    mask = np.ones((2, t), np.float32)
    mask[1, 8:] = 0
    st = {"entropy": h, "rkl": np.ones_like(h), "fkl": np.ones_like(h)}
    loss_per_token = rng.uniform(0.5, 2.0, (2, t))
    idx, valid, weight = draws("entropy_sample", st, mask, 0.25, SelectionOptions(importance_weights=True))
    assert np.all(weight[~valid] == 0) and np.all(weight[valid] >= 1.0)
    estimate = np.sum(weight * np.take_along_axis(loss_per_token[None], idx, axis=2), axis=-1)
    truth = np.sum(loss_per_token * mask, axis=-1)
    stderr = estimate.std(0) / np.sqrt(N_DRAWS)
    np.testing.assert_array_less(np.abs(estimate.mean(0) - truth), Z * stderr)
    # Keeping every token leaves nothing to correct.
    _, valid_all, weight_all = draws("entropy_sample", st, mask, 1.0, SelectionOptions(importance_weights=True))
    np.testing.assert_allclose(weight_all[valid_all], 1.0)


def test_entropy_sample_batch_unit_keeps_the_global_count():
    rng = np.random.default_rng(4)
    h = rng.uniform(0.05, 1.0, (3, 10)).astype(np.float32)
    mask = np.ones((3, 10), np.float32)
    mask[0, :6] = 0
    st = {"entropy": h, "rkl": np.ones_like(h), "fkl": np.ones_like(h)}
    idx, valid, _ = draws("entropy_sample", st, mask, 0.5, SelectionOptions(unit="batch", batch_capacity=2.0))
    assert np.all(valid.sum(axis=(1, 2)) == ref.keep_count(0.5, 24))
    freq = inclusion(idx, valid, 10)
    assert np.all(freq[mask == 0] == 0)
    # Higher entropy is kept more often across the whole batch.
    order = np.argsort(h[mask > 0])
    assert np.corrcoef(h[mask > 0][order], freq[mask > 0][order])[0, 1] > 0.9


def test_different_keys_give_different_samples():
    h = jnp.full((1, 32), 0.5)
    st = {"entropy": h, "rkl": h, "fkl": h}
    a, _ = selection.select("entropy_sample", st, jnp.ones((1, 32)), 0.5, jax.random.PRNGKey(0))
    b, _ = selection.select("entropy_sample", st, jnp.ones((1, 32)), 0.5, jax.random.PRNGKey(1))
    assert set(np.asarray(a)[0].tolist()) != set(np.asarray(b)[0].tolist())
