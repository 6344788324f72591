"""plan + planned_loss: whole-batch selection, then the loss micro-batch by micro-batch, equals distill_loss;
non-finite statistics are never selected."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tipjax import selection
from tipjax.selection import SelectionOptions

B, T, DS, DT, V = 4, 12, 6, 10, 32
M = 2  # micro-batches; micro-batch j holds rows j, j + M, ... (the trainer's strided split)
CHUNK = 5


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    hs, ht = rng.standard_normal((B, T, DS)), rng.standard_normal((B, T, DT))
    ws, wt = rng.standard_normal((DS, V)) / 2, rng.standard_normal((DT, V)) / 2
    hs[2] *= 3.0  # a sharper, more divergent row: it wins more than its share of a batch-wide ranking
    mask = np.zeros((B, T), np.float32)
    mask[0, 2:11] = 1
    mask[1, 4:12] = 1
    mask[2, 1:12] = 1
    mask[3, 6] = 1  # m = 1: floor(0.4) keeps nothing
    return [jnp.asarray(x, jnp.float32) for x in (hs, ws, ht, wt)] + [jnp.asarray(mask)]


def micro(x, j):
    return x[j::M]


def split(x):
    """[B, ...] -> [M, B / M, ...]: micro-batch j holds rows j, j + M, ... (the trainer's strided split)."""
    return x.reshape(B // M, M, *x.shape[1:]).swapaxes(0, 1)


def merge(x):
    return x.swapaxes(0, 1).reshape(B, *x.shape[2:])


def two_phase(hs, ws, ht, wt, mask, rng, *, rule, ratio, options, backward):
    """The trainer's restructured step: statistics per micro-batch, one plan, gradients per micro-batch."""

    def stats_pass(x):
        return selection.token_stats_from_hidden(x[0], ws, x[1], wt, x[2], chunk_size=CHUNK, beta=None)

    stats = {k: merge(v) for k, v in jax.lax.map(stats_pass, (split(hs), split(ht), split(mask))).items()}
    p = selection.plan(rule, stats, mask, ratio, rng, options=options)

    def loss(hs_j, ws, ht_j, idx, scale):
        return selection.planned_loss(hs_j, ws, ht_j, wt, idx, scale, chunk_size=CHUNK, backward=backward)

    def grad_pass(carry, x):
        value, (g_hs, g_ws) = jax.value_and_grad(loss, argnums=(0, 1))(x[0], ws, x[1], x[2], x[3])
        return (carry[0] + value, carry[1] + g_ws), g_hs

    (total, d_ws), d_hs = jax.lax.scan(
        grad_pass, (jnp.float32(0), jnp.zeros_like(ws)), (split(hs), split(ht), split(p.idx), split(p.scale))
    )
    no_gather = None
    if p.keeps_all:
        no_gather = sum(loss(micro(hs, j), ws, micro(ht, j), None, micro(p.scale, j)) for j in range(M))
    return total, (merge(d_hs), d_ws), p, no_gather


@functools.partial(jax.jit, static_argnames=("rule", "ratio", "options", "backward"))
def whole(hs, ws, ht, wt, mask, rng, *, rule, ratio, options, backward):
    def loss(hs, ws):
        return selection.distill_loss(
            hs, ws, ht, wt, mask, rule=rule, ratio=ratio, rng=rng, options=options, chunk_size=CHUNK, backward=backward
        )

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(hs, ws)


CASES = [
    (rule, ratio, SelectionOptions(unit=unit), "fused")
    for rule in selection.RULES
    for unit in ("rollout", "batch")
    for ratio in (0.4, 1.0)
] + [
    ("entropy_sample", 0.4, SelectionOptions(importance_weights=True), "remat"),
    ("entropy_sample", 0.4, SelectionOptions(unit="batch", importance_weights=True), "fused"),
    ("soft_or", 0.4, SelectionOptions(aggregation="rollout_mean", min_one=True), "remat"),
    ("q3", 0.5, SelectionOptions(unit="batch", norm_scope="rollout", aggregation="rollout_mean"), "fused"),
]


@functools.partial(jax.jit, static_argnames=("rule", "ratio", "options", "backward"))
def both(*args, **kw):
    # One program per case: compiling dominates this test's time.
    return whole(*args, **kw), two_phase(*args, **kw)


@pytest.mark.parametrize("rule,ratio,options,backward", CASES)
def test_plan_then_micro_batch_losses_equal_distill_loss(rule, ratio, options, backward):
    hs, ws, ht, wt, mask = inputs()
    rng = jax.random.PRNGKey(7)
    kw = {"rule": rule, "ratio": ratio, "options": options, "backward": backward}
    ((want, want_metrics), want_grads), (got, grads, p, no_gather) = both(hs, ws, ht, wt, mask, rng, **kw)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
    assert set(p.metrics) == set(want_metrics)
    for name, value in want_metrics.items():
        np.testing.assert_allclose(float(p.metrics[name]), float(value), rtol=1e-5, atol=1e-7, err_msg=name)
    assert p.keeps_all == (rule == "all" or ratio == 1.0)
    assert p.idx.shape == p.valid.shape == p.scale.shape and p.idx.dtype == jnp.int32
    assert np.all(np.asarray(p.scale)[~np.asarray(p.valid)] == 0)
    if p.keeps_all:
        assert p.idx.shape == (B, T)
        np.testing.assert_allclose(float(no_gather), float(want), rtol=1e-6)
    if ratio < 1 and rule != "all":
        assert 0 < float(p.metrics["n_kept"]) < float(p.metrics["n_response"])


@pytest.mark.parametrize(
    "rule,options", [("all", SelectionOptions()), ("q3", SelectionOptions(aggregation="rollout_mean"))]
)
def test_one_pass_when_every_token_is_kept(rule, options):
    """keeps_all: the scale is known up front and the loss pass returns the statistics for the metrics."""
    hs, ws, ht, wt, mask = inputs(4)
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, V, (B, T)), jnp.int32)
    rng = jax.random.PRNGKey(0)
    assert selection.keeps_all(rule, 1.0, None, T)

    @jax.jit
    def one_pass(hs, ws):
        def grad_pass(carry, x):
            loss = functools.partial(selection.planned_loss, chunk_size=CHUNK, return_stats=True)
            (value, st), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x[0], ws, x[1], wt, None, x[2],
                                                                                   tokens=x[3])
            return (carry[0] + value, carry[1] + g[1]), (g[0], st)

        scale = selection.keep_all_scale(mask, options)
        (total, d_ws), (d_hs, st) = jax.lax.scan(
            grad_pass, (jnp.float32(0), jnp.zeros_like(ws)), (split(hs), split(ht), split(scale), split(tokens))
        )
        st = {k: merge(v) for k, v in st.items()}
        return total, (merge(d_hs), d_ws), selection.plan(rule, st, mask, 1.0, rng, options=options).metrics

    def distill(hs, ws):
        return selection.distill_loss(hs, ws, ht, wt, mask, rule=rule, ratio=1.0, rng=rng, options=options,
                                      chunk_size=CHUNK, tokens=tokens)

    (want, want_metrics), want_grads = jax.jit(jax.value_and_grad(distill, argnums=(0, 1), has_aux=True))(hs, ws)
    got, grads, metrics = one_pass(hs, ws)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
    assert "teacher_token_prob_all" in metrics and set(metrics) == set(want_metrics)
    for name, value in want_metrics.items():
        np.testing.assert_allclose(float(metrics[name]), float(value), rtol=1e-5, atol=1e-7, err_msg=name)


def test_whole_batch_plan_differs_from_micro_batch_plans():
    """The point of planning once: a micro-batch's normalisation and ranking pick other tokens."""
    hs, ws, ht, wt, mask = inputs()
    stats = selection.token_stats_from_hidden(hs, ws, ht, wt, mask, beta=None)
    options = SelectionOptions(unit="batch")
    key = jax.random.PRNGKey(0)
    plan = jax.jit(functools.partial(selection.plan, "soft_or", ratio=0.4, rng=key, options=options))
    full = plan(stats, mask)
    kept = [np.asarray(full.valid[j::M]).sum() for j in range(M)]
    parts = [plan({k: v[j::M] for k, v in stats.items()}, mask[j::M]) for j in range(M)]
    assert kept != [int(np.asarray(q.valid).sum()) for q in parts]


def masked_stats(rng, b, t):
    st = {
        "entropy": rng.uniform(0.05, 1, (b, t)).astype(np.float32),
        "rkl": rng.exponential(1.0, (b, t)).astype(np.float32),
        "fkl": rng.exponential(1.0, (b, t)).astype(np.float32),
    }
    mask = np.zeros((b, t), np.float32)
    for i in range(b):
        mask[i, i : t - i] = 1
    return {k: np.where(mask > 0, v, 0).astype(np.float32) for k, v in st.items()}, mask


@pytest.mark.parametrize("unit", ["rollout", "batch"])
@pytest.mark.parametrize("rule", [r for r in selection.RULES if r != "all"])
def test_a_non_finite_statistic_is_selected_as_if_masked(rule, unit):
    st, mask = masked_stats(np.random.default_rng(3), 5, 20)
    options = SelectionOptions(unit=unit, importance_weights=rule == "entropy_sample")
    key = jax.random.PRNGKey(1)
    plan = jax.jit(selection.plan, static_argnums=(0, 3), static_argnames=("options",))
    for name, bad in (("entropy", np.nan), ("rkl", np.inf), ("fkl", -np.inf), ("rkl", np.nan)):
        dirty = {k: v.copy() for k, v in st.items()}
        dirty[name][2, 7] = bad
        clean_mask = mask.copy()
        clean_mask[2, 7] = 0
        got = plan(rule, dirty, mask, 0.3, key, options=options)
        want = plan(rule, st, clean_mask, 0.3, key, options=options)
        np.testing.assert_array_equal(np.asarray(got.valid), np.asarray(want.valid), err_msg=name)
        np.testing.assert_array_equal(np.asarray(got.idx), np.asarray(want.idx), err_msg=name)
        np.testing.assert_allclose(np.asarray(got.scale), np.asarray(want.scale), rtol=1e-6, err_msg=name)
        assert float(got.metrics["n_nonfinite"]) == 1 and float(want.metrics["n_nonfinite"]) == 0
        assert float(got.metrics["n_response"]) == mask.sum()
        for key_name in ("entropy_all", "rkl_all", "fkl_kept", "q1", "q3"):
            np.testing.assert_allclose(float(got.metrics[key_name]), float(want.metrics[key_name]), rtol=1e-6)


@pytest.mark.parametrize("rule,unit", [("soft_or", "rollout"), ("q3", "batch"), ("entropy_sample", "rollout")])
def test_nan_hidden_state_leaves_the_loss_and_gradients_of_the_rest_intact(rule, unit):
    hs, ws, ht, wt, mask = inputs(1)
    dirty = hs.at[1, 6, 0].set(jnp.nan)
    clean_mask = mask.at[1, 6].set(0)
    kw = {"rule": rule, "ratio": 0.4, "options": SelectionOptions(unit=unit), "backward": "fused"}
    key = jax.random.PRNGKey(2)
    (got, metrics), grads = whole(dirty, ws, ht, wt, mask, key, **kw)
    (want, _), want_grads = whole(hs, ws, ht, wt, clean_mask, key, **kw)
    assert float(metrics["n_nonfinite"]) == 1
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    for g, w in zip(grads, want_grads):
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)
    assert all(np.isfinite(float(v)) for v in metrics.values())


@pytest.mark.parametrize("backward", ["fused", "remat"])
def test_a_zero_scale_slot_at_a_nan_position_touches_no_gradient(backward):
    hs, ws, ht, wt, _ = inputs(3)
    hs, ht = hs.at[0, 5].set(jnp.nan), ht.at[1, 2].set(jnp.inf)
    idx = jnp.array([[1, 5, 3], [2, 4, 0], [0, 1, 2], [7, 8, 9]], jnp.int32)
    scale = jnp.array([[0.5, 0.0, 0.25], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.1, 0.2, 0.3]], jnp.float32)
    loss = functools.partial(selection.planned_loss, chunk_size=4, backward=backward)
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(hs, ws, ht, wt, idx, scale)
    clean = [x.at[0, 5].set(0.0).at[1, 2].set(0.0) for x in (hs, ht)]
    want, want_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(clean[0], ws, clean[1], wt, idx, scale)
    np.testing.assert_allclose(float(value), float(want), rtol=1e-6)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-8)


def test_keeping_every_token_keeps_a_non_finite_one_and_counts_it():
    """Rule "all" has no selection to skip it with: the loss turns non-finite (the trainer skips the step)."""
    hs, ws, ht, wt, mask = inputs(2)
    dirty = hs.at[0, 4, 1].set(jnp.nan)
    (value, metrics), _ = whole(dirty, ws, ht, wt, mask, jax.random.PRNGKey(0), rule="all", ratio=1.0,
                                options=SelectionOptions(), backward="fused")
    assert not np.isfinite(float(value))
    assert float(metrics["n_nonfinite"]) == 1 and float(metrics["n_kept"]) == float(metrics["n_response"])
    assert np.isfinite(float(metrics["entropy_all"])) and np.isfinite(float(metrics["q1"]))


def test_plan_is_jittable_with_a_traced_ratio_and_a_static_capacity():
    st, mask = masked_stats(np.random.default_rng(4), 3, 16)

    @jax.jit
    def plan(st, mask, ratio, key):
        return selection.plan("soft_or", st, mask, ratio, key, capacity=8)

    static = jax.jit(selection.plan, static_argnums=(0, 3), static_argnames=("capacity",))
    for ratio in (0.3, 0.5):
        got = plan(st, mask, jnp.float32(ratio), jax.random.PRNGKey(0))
        want = static("soft_or", st, mask, ratio, jax.random.PRNGKey(0), capacity=8)
        np.testing.assert_array_equal(np.asarray(got.idx), np.asarray(want.idx))
        np.testing.assert_allclose(np.asarray(got.scale), np.asarray(want.scale), rtol=1e-6)
        assert not got.keeps_all
    assert plan._cache_size() == 1


def test_bad_planned_loss_arguments_name_the_offender():
    hs, ws, ht, wt, mask = inputs()
    idx, scale = jnp.zeros((B, 3), jnp.int32), jnp.ones((B, 3))
    with pytest.raises(ValueError, match="divergence='kl'"):
        selection.planned_loss(hs, ws, ht, wt, idx, scale, divergence="kl")
    with pytest.raises(ValueError, match="chunk_size"):
        selection.planned_loss(hs, ws, ht, wt, idx, scale, chunk_size=0)
    with pytest.raises(ValueError, match="student_hidden"):
        selection.planned_loss(hs, ws, ht, wt, None, scale)
    with pytest.raises(ValueError, match="rule='top'"):
        selection.plan("top", {"entropy": mask}, mask, 0.5, jax.random.PRNGKey(0))


def test_plan_and_planned_loss_are_sharding_neutral():
    """Rows over (data, fsdp), vocabulary over tensor: the same plan, loss and gradients as on one device."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))

    def on(x, *spec):
        return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))

    hs, ws, ht, wt, mask = inputs(5)
    rows = ("data", "fsdp")

    @jax.jit
    def run(hs, ws, ht, wt, mask):
        stats = selection.token_stats_from_hidden(hs, ws, ht, wt, mask, chunk_size=CHUNK, beta=None)
        p = selection.plan("soft_or", stats, mask, 0.4, jax.random.PRNGKey(0), options=SelectionOptions(unit="batch"))
        loss, grads = jax.value_and_grad(selection.planned_loss, argnums=(0, 1))(
            hs, ws, ht, wt, p.idx, p.scale, chunk_size=CHUNK
        )
        return p, loss, grads

    want = run(hs, ws, ht, wt, mask)
    got = run(on(hs, rows, None, None), on(ws, None, "tensor"), on(ht, rows, None, None), on(wt, None, "tensor"),
              on(mask, rows, None))
    np.testing.assert_array_equal(np.asarray(got[0].idx), np.asarray(want[0].idx))
    np.testing.assert_array_equal(np.asarray(got[0].valid), np.asarray(want[0].valid))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
