"""Deterministic TIP rules against a numpy reference that sorts each row (stable, descending)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_selection_reference as ref

from tipjax import selection
from tipjax.selection import SelectionOptions

DETERMINISTIC = ("entropy_topk", "soft_or", "soft_or_bottom", "q3", "div")
RATIOS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def mask_with_prompts_and_padding(rng, b, t):
    """Row i: a prompt of zeros, a response of random length (1 included), then padding."""
    mask = np.zeros((b, t), np.float32)
    for i in range(b):
        start = int(rng.integers(0, t // 3))
        length = 1 if i == 0 else 3 if i == 1 else int(rng.integers(1, t - start + 1))
        mask[i, start : start + length] = 1
    return mask


def continuous_stats(rng, b, t):
    return {
        "entropy": rng.uniform(0, 1, (b, t)).astype(np.float32),
        "rkl": rng.exponential(1.0, (b, t)).astype(np.float32),
        "fkl": rng.exponential(1.0, (b, t)).astype(np.float32),
    }


def check_rows(idx, valid, want_rows, k_static):
    idx, valid = np.asarray(idx), np.asarray(valid)
    assert idx.shape == valid.shape == (len(want_rows), k_static) and idx.dtype == np.int32
    for i, want in enumerate(want_rows):
        assert valid[i].sum() == len(want) and not valid[i, len(want):].any()
        np.testing.assert_array_equal(idx[i, : len(want)], want, err_msg=f"row {i}")


@pytest.mark.parametrize("scope", ["batch", "rollout"])
@pytest.mark.parametrize("rule", DETERMINISTIC)
def test_rule_matches_sorted_reference(rule, scope):
    rng = np.random.default_rng(hash((rule, scope)) % 2**32)
    b, t = 6, 40
    mask = mask_with_prompts_and_padding(rng, b, t)
    st = continuous_stats(rng, b, t)
    options = SelectionOptions(norm_scope=scope)
    score = ref.rule_score(rule, st, mask, scope)
    for ratio in RATIOS:
        idx, valid = selection.select(rule, st, mask, ratio, jax.random.PRNGKey(0), options=options)
        check_rows(idx, valid, ref.select_rows(score, mask, ratio), math.ceil(ratio * t - 1e-9))


@pytest.mark.parametrize("rule", ["entropy_topk", "soft_or", "soft_or_bottom", "q3", "div", "all"])
def test_ties_go_to_the_earlier_position(rule):
    """Dyadic values are exact in fp32 and fp64, so ties are real ties in both."""
    rng = np.random.default_rng(7)
    b, t = 4, 32
    mask = np.ones((b, t), np.float32)
    mask[:, :5] = 0
    mask[2, -6:] = 0
    grid = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    st = {k: grid[rng.integers(0, 4, (b, t))] for k in ("entropy", "rkl", "fkl")}
    st["entropy"][:, -3:] = 1.0  # enough maxima that the 98th percentile clip is 1.0
    score = ref.rule_score(rule, st, mask)
    for ratio in (0.25, 0.5, 0.75):
        idx, valid = selection.select(rule, st, mask, ratio, jax.random.PRNGKey(0))
        k_static = t if rule == "all" else math.ceil(ratio * t)
        check_rows(idx, valid, ref.select_rows(score, mask, ratio, all_tokens=rule == "all"), k_static)


def test_rows_with_zero_keep_count_keep_nothing_unless_min_one():
    st = continuous_stats(np.random.default_rng(8), 3, 10)
    mask = np.zeros((3, 10), np.float32)
    mask[0, 4] = 1  # m = 1: floor(0.5) = 0
    mask[1, 2:5] = 1  # m = 3: floor(1.5) = 1
    _, valid = selection.select("div", st, mask, 0.5, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(valid).sum(-1), [0, 1, 0])
    idx, valid = selection.select("div", st, mask, 0.5, jax.random.PRNGKey(0), options=SelectionOptions(min_one=True))
    np.testing.assert_array_equal(np.asarray(valid).sum(-1), [1, 1, 0])
    assert np.asarray(idx)[0, 0] == 4


def test_keep_counts_are_exact_for_decimal_ratios_and_traced():
    ratios = [j / 100 for j in range(1, 101)] + [0.125, 0.333, 0.999]
    m = np.arange(0, 400)
    counts = jax.jit(selection.keep_counts)
    for ratio in ratios:
        want = [ref.keep_count(ratio, int(x)) for x in m]
        np.testing.assert_array_equal(np.asarray(counts(jnp.float32(ratio), m)), want, err_msg=str(ratio))
    # A traced ratio cannot be validated on the host; outside (0, 1] it still never exceeds the row.
    np.testing.assert_array_equal(np.asarray(counts(jnp.float32(1.5), m)), m)
    np.testing.assert_array_equal(np.asarray(counts(jnp.float32(-0.5), m)), 0)


def test_explicit_capacity_truncates_to_the_best_and_counts_drops():
    rng = np.random.default_rng(9)
    st = continuous_stats(rng, 2, 20)
    mask = np.ones((2, 20), np.float32)
    chosen = selection.select_weighted("div", st, mask, 0.5, jax.random.PRNGKey(0), capacity=4)
    want = ref.select_rows(ref.rule_score("div", st, mask), mask, 0.5)
    check_rows(chosen.idx, chosen.valid, [w[:4] for w in want], 4)
    assert int(chosen.n_dropped) == 2 * (10 - 4)


def test_batch_unit_is_a_global_stable_top_k():
    rng = np.random.default_rng(10)
    b, t = 5, 16
    mask = mask_with_prompts_and_padding(rng, b, t)
    st = continuous_stats(rng, b, t)
    st["rkl"][3, :] = st["rkl"][3, :] + 10.0  # row 3 wins more than its share
    options = SelectionOptions(unit="batch", batch_capacity=1.5)
    for ratio in (0.2, 0.5):
        chosen = selection.select_weighted("div", st, mask, ratio, jax.random.PRNGKey(0), options=options)
        flat = np.flatnonzero(mask.reshape(-1))
        order = flat[np.argsort(-st["rkl"].reshape(-1)[flat].astype(np.float64), kind="stable")]
        picked = order[: ref.keep_count(ratio, len(flat))]
        capacity = min(t, math.ceil(1.5 * ratio * t))
        want_rows, dropped = [], 0
        for i in range(b):
            pos = np.sort(picked[picked // t == i] % t)
            ranked = pos[np.argsort(-st["rkl"][i, pos], kind="stable")]
            want_rows.append(ranked[:capacity])
            dropped += max(len(ranked) - capacity, 0)
        check_rows(chosen.idx, chosen.valid, want_rows, capacity)
        assert int(chosen.n_dropped) == dropped


def test_all_rule_keeps_every_response_token_in_order():
    mask = np.array([[0, 0, 1, 1, 1, 0], [1, 0, 1, 0, 1, 1]], np.float32)
    st = continuous_stats(np.random.default_rng(11), 2, 6)
    idx, valid = selection.select("all", st, mask, 0.3, jax.random.PRNGKey(0))
    check_rows(idx, valid, [np.array([2, 3, 4]), np.array([0, 2, 4, 5])], 6)


def test_invalid_arguments_name_the_offender():
    st = continuous_stats(np.random.default_rng(12), 1, 4)
    mask = np.ones((1, 4), np.float32)
    key = jax.random.PRNGKey(0)
    for bad in (0.0, -0.2, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            selection.select("soft_or", st, mask, bad, key)
    with pytest.raises(ValueError, match="rule='top'.*soft_or_bottom"):
        selection.select("top", st, mask, 0.5, key)
    with pytest.raises(ValueError, match="capacity"):
        selection.select("soft_or", st, mask, 0.5, key, capacity=9)
    with pytest.raises(ValueError, match="capacity"):
        jax.jit(lambda r: selection.select("soft_or", st, mask, r, key))(0.5)
    with pytest.raises(ValueError, match="norm_scope"):
        SelectionOptions(norm_scope="global")
    with pytest.raises(ValueError, match="unit"):
        SelectionOptions(unit="token")


def test_traced_ratio_same_selection_no_recompile():
    rng = np.random.default_rng(13)
    st = continuous_stats(rng, 3, 30)

    # A function of its own: jit caches of selection.select are shared with other tests' wrappers.
    @jax.jit
    def select(st, mask, ratio, rng):
        return selection.select("soft_or", st, mask, ratio, rng, capacity=9)

    for i, ratio in enumerate((0.3, 0.25, 0.21)):
        mask = mask_with_prompts_and_padding(np.random.default_rng(i), 3, 30)
        idx, valid = select(st, mask, jnp.float32(ratio), jax.random.PRNGKey(0))
        check_rows(idx, valid, ref.select_rows(ref.rule_score("soft_or", st, mask), mask, ratio), 9)
    assert select._cache_size() == 1
