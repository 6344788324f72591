"""distill_loss: values and gradients against a dense masked loss, metrics, empty masks, bad input, memory."""

import functools

import jax
import jax.numpy as jnp
import jaxpr_walk
import numpy as np
import pytest
import test_selection_reference as ref

from tipjax import selection
from tipjax.selection import SelectionOptions

B, T, DS, DT, V = 3, 14, 8, 12, 40
# Jitted: op-by-op dispatch of the chunked loss is many times slower than one compile.
distill = jax.jit(
    selection.distill_loss,
    static_argnames=("rule", "ratio", "divergence", "chunk_size", "options", "beta", "capacity", "backward"),
)


def inputs(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    hs, ht = rng.standard_normal((B, T, DS)), rng.standard_normal((B, T, DT))
    ws, wt = rng.standard_normal((DS, V)) / 2, rng.standard_normal((DT, V)) / 2
    mask = np.zeros((B, T), np.float32)
    mask[0, 3:12] = 1
    mask[1, 5:14] = 1
    mask[2, 1:4] = 1
    return [jnp.asarray(x, dtype) for x in (hs, ws, ht, wt)] + [jnp.asarray(mask)]


def dense_loss(hs, ws, ht, wt, keep, divergence, beta=0.5):
    """Straightforward: full [B, T, V] logits, the divergence everywhere, mean over the kept positions."""
    ls = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", hs, ws), axis=-1)
    lt = jax.lax.stop_gradient(jax.nn.log_softmax(jnp.einsum("btd,dv->btv", ht, wt), axis=-1))
    ps, pt = jnp.exp(ls), jnp.exp(lt)
    if divergence == "rkl":
        per = jnp.sum(ps * (ls - lt), -1)
    elif divergence == "fkl":
        per = jnp.sum(pt * (lt - ls), -1)
    else:
        m = beta * pt + (1 - beta) * ps
        per = beta * jnp.sum(pt * (lt - jnp.log(m)), -1) + (1 - beta) * jnp.sum(ps * (ls - jnp.log(m)), -1)
    return jnp.sum(per * keep) / jnp.sum(keep)


def kept_positions(hs, ws, ht, wt, mask, rule, ratio, rng):
    st = jax.jit(selection.token_stats_from_hidden)(hs, ws, ht, wt, mask)
    idx, valid = jax.jit(selection.select, static_argnums=(0, 3))(rule, st, mask, ratio, rng)
    keep = np.zeros((B, T), np.float32)
    for i in range(B):
        keep[i, np.asarray(idx)[i][np.asarray(valid)[i]]] = 1
    return keep


@pytest.mark.parametrize("backward", ["fused", "remat"])
@pytest.mark.parametrize(
    "rule,ratio,divergence,chunk",
    [("soft_or", 0.5, "rkl", 5), ("entropy_sample", 0.5, "rkl", 512), ("all", 1.0, "rkl", 4),
     ("q3", 0.3, "fkl", 3), ("div", 0.5, "jsd", 7), ("soft_or", 1.0, "jsd", 6)],
)
def test_value_and_gradient_equal_dense_masked_loss(rule, ratio, divergence, chunk, backward):
    hs, ws, ht, wt, mask = inputs()
    rng = jax.random.PRNGKey(3)

    def tip(hs, ws, ht, wt):
        return selection.distill_loss(
            hs, ws, ht, wt, mask, rule=rule, ratio=ratio, rng=rng, divergence=divergence, chunk_size=chunk, beta=0.3,
            backward=backward,
        )[0]

    keep = kept_positions(hs, ws, ht, wt, mask, rule, ratio, rng)
    value, grads = jax.jit(jax.value_and_grad(tip, argnums=(0, 1, 2, 3)))(hs, ws, ht, wt)
    want, want_grads = jax.value_and_grad(dense_loss, argnums=(0, 1))(hs, ws, ht, wt, keep, divergence, 0.3)
    np.testing.assert_allclose(float(value), float(want), rtol=1e-5)
    for g, w in zip(grads[:2], want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
    assert not np.any(np.asarray(grads[2])) and not np.any(np.asarray(grads[3]))
    # The same value from float64 numpy.
    st64 = ref.stats(np.asarray(hs, np.float64) @ np.asarray(ws), np.asarray(ht, np.float64) @ np.asarray(wt), beta=0.3)
    np.testing.assert_allclose(float(value), np.sum(st64[divergence] * keep) / keep.sum(), rtol=1e-5)


def test_rollout_mean_aggregation():
    hs, ws, ht, wt, mask = inputs(1)
    rng = jax.random.PRNGKey(0)
    options = SelectionOptions(aggregation="rollout_mean")
    value, _ = distill(hs, ws, ht, wt, mask, rule="soft_or", ratio=0.5, rng=rng, options=options)
    keep = kept_positions(hs, ws, ht, wt, mask, "soft_or", 0.5, rng)
    rkl = ref.stats(np.asarray(hs, np.float64) @ np.asarray(ws), np.asarray(ht, np.float64) @ np.asarray(wt))["rkl"]
    rows = [np.sum(rkl[i] * keep[i]) / keep[i].sum() for i in range(B) if keep[i].sum() > 0]
    np.testing.assert_allclose(float(value), np.mean(rows), rtol=1e-5)


def test_metrics_match_numpy():
    hs, ws, ht, wt, mask = inputs(2)
    rng = jax.random.PRNGKey(0)
    _, metrics = distill(hs, ws, ht, wt, mask, rule="q3", ratio=0.5, rng=rng)
    keep = kept_positions(hs, ws, ht, wt, mask, "q3", 0.5, rng)
    st = ref.stats(np.asarray(hs, np.float64) @ np.asarray(ws), np.asarray(ht, np.float64) @ np.asarray(wt))
    resp = mask > 0
    assert metrics["n_response"] == resp.sum() and metrics["n_kept"] == keep.sum() and metrics["empty"] == 0
    np.testing.assert_allclose(float(metrics["kept_fraction"]), keep.sum() / resp.sum(), rtol=1e-6)
    for name in ("entropy", "rkl", "fkl"):
        np.testing.assert_allclose(float(metrics[f"{name}_all"]), st[name][resp].mean(), rtol=1e-5)
        np.testing.assert_allclose(float(metrics[f"{name}_kept"]), st[name][keep > 0].mean(), rtol=1e-5)
    h_hat, d_hat = ref.normalise(st["entropy"], st["rkl"], mask)
    high_h, high_d = h_hat[resp] > np.median(h_hat[resp]), d_hat[resp] > np.median(d_hat[resp])
    want = [np.mean(high_h & high_d), np.mean(high_h & ~high_d), np.mean(~high_h & high_d), np.mean(~high_h & ~high_d)]
    np.testing.assert_allclose([float(metrics[f"q{i}"]) for i in range(1, 5)], want, rtol=1e-6)


def test_quadrants_with_fixed_thresholds():
    rng = np.random.default_rng(5)
    st = {"entropy": rng.uniform(size=(2, 20)).astype(np.float32), "rkl": rng.exponential(size=(2, 20)).astype(np.float32)}
    mask = np.ones((2, 20), np.float32)
    mask[1, 15:] = 0
    shares = selection.quadrant_shares(st, mask, SelectionOptions(quadrant_thresholds=(0.3, 0.2)))
    h_hat, d_hat = ref.normalise(st["entropy"], st["rkl"], mask)
    resp = mask > 0
    high_h, high_d = h_hat[resp] > 0.3, d_hat[resp] > 0.2
    np.testing.assert_allclose(float(shares["q3"]), np.mean(~high_h & high_d), rtol=1e-6)
    np.testing.assert_allclose(sum(float(v) for v in shares.values()), 1.0, rtol=1e-6)
    labels = np.asarray(selection.quadrant_labels(st, mask))
    assert np.all(labels[~resp] == 0) and np.all(np.isin(labels[resp], [1, 2, 3, 4]))


@pytest.mark.parametrize(
    "rule,ratio,backward",
    [("all", 1.0, "fused"), ("soft_or", 0.5, "fused"), ("entropy_sample", 0.2, "remat"), ("q3", 0.1, "remat")],
)
def test_empty_mask_gives_zero_loss_and_finite_gradients(rule, ratio, backward):
    hs, ws, ht, wt, mask = inputs(3)
    empty = jnp.zeros_like(mask)

    def tip(hs, ws):
        return selection.distill_loss(
            hs, ws, ht, wt, empty, rule=rule, ratio=ratio, rng=jax.random.PRNGKey(0), backward=backward
        )

    (value, metrics), grads = jax.jit(jax.value_and_grad(tip, argnums=(0, 1), has_aux=True))(hs, ws)
    assert float(value) == 0.0 and float(metrics["empty"]) == 1.0 and float(metrics["n_kept"]) == 0
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert all(not np.any(np.asarray(g)) for g in grads)


def test_no_recompile_across_masks_and_ratios_with_the_same_capacity():
    hs, ws, ht, wt, mask = inputs(4)

    @jax.jit
    def step(hs, ws, mask, ratio, rng):
        return jax.value_and_grad(
            lambda h, w: selection.distill_loss(h, w, ht, wt, mask, rule="soft_or", ratio=ratio, rng=rng, capacity=6)[0],
            argnums=(0, 1),
        )(hs, ws)

    got = []
    for i, ratio in enumerate((0.4, 0.3, 0.35)):
        m = np.asarray(mask).copy()
        m[i % B, :] = 0
        got.append((ratio, m, step(hs, ws, jnp.asarray(m), jnp.float32(ratio), jax.random.PRNGKey(i))[0]))
    assert step._cache_size() == 1
    for ratio, m, value in got:
        want, _ = distill(hs, ws, ht, wt, m, rule="soft_or", ratio=ratio, rng=jax.random.PRNGKey(0))
        np.testing.assert_allclose(float(value), float(want), rtol=1e-6)


def test_sharded_vocabulary_and_batch_give_the_same_loss_and_gradients():
    devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
    mesh = jax.sharding.Mesh(devices, ("data", "fsdp", "tensor"))
    rng = np.random.default_rng(6)
    b, t, v = 4, 16, 64
    hs, ht = jnp.asarray(rng.standard_normal((b, t, DS)), jnp.float32), jnp.asarray(rng.standard_normal((b, t, DT)), jnp.float32)
    ws, wt = jnp.asarray(rng.standard_normal((DS, v)), jnp.float32), jnp.asarray(rng.standard_normal((DT, v)), jnp.float32)
    mask = np.zeros((b, t), np.float32)
    for i in range(b):
        mask[i, 2 + i : 14 - i] = 1

    def sharding(*spec):
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

    for rule, ratio, backward in (("all", 1.0, "fused"), ("soft_or", 0.5, "remat"), ("entropy_sample", 0.25, "fused")):
        def loss(hs, ws, ht, wt, mask):
            return selection.distill_loss(
                hs, ws, ht, wt, mask, rule=rule, ratio=ratio, rng=jax.random.PRNGKey(1), chunk_size=8, backward=backward
            )

        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (want, want_metrics), want_grads = fn(hs, ws, ht, wt, jnp.asarray(mask))
        batch = sharding(("data", "fsdp"))
        args = (
            jax.device_put(hs, sharding(("data", "fsdp"), None, None)),
            jax.device_put(ws, sharding(None, "tensor")),
            jax.device_put(ht, sharding(("data", "fsdp"), None, None)),
            jax.device_put(wt, sharding(None, "tensor")),
            jax.device_put(jnp.asarray(mask), batch),
        )
        (got, metrics), grads = fn(*args)
        assert len(args[1].sharding.device_set) == 8
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["q1"]), float(want_metrics["q1"]))
        for g, w in zip(grads, want_grads):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backward", ["fused", "remat"])
def test_bf16_inputs_give_bf16_gradients_close_to_fp32(backward):
    hs, ws, ht, wt, mask = inputs(7)
    low = [x.astype(jnp.bfloat16) for x in (hs, ws, ht, wt)]

    def tip(hs, ws, ht, wt):
        return selection.distill_loss(
            hs, ws, ht, wt, mask, rule="soft_or", ratio=0.5, rng=jax.random.PRNGKey(0), chunk_size=4, backward=backward
        )[0]

    fn = jax.jit(jax.value_and_grad(tip, argnums=(0, 1)))
    value, grads = fn(*low)
    want, want_grads = fn(*[x.astype(jnp.float32) for x in low])
    assert value.dtype == jnp.float32 and grads[0].dtype == grads[1].dtype == jnp.bfloat16
    np.testing.assert_allclose(float(value), float(want), rtol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), rtol=2e-2, atol=2e-3)


def test_bad_input_names_the_argument():
    hs, ws, ht, wt, mask = inputs(8)
    key = jax.random.PRNGKey(0)
    kw = {"rule": "soft_or", "ratio": 0.5, "rng": key}
    cases = [
        ((hs, ws, ht, wt[:, :-1], mask), kw, "vocabulary mismatch"),
        ((hs, ws, ht, wt, mask[:, :-1]), kw, "student_hidden"),
        ((hs, ws[:-1], ht, wt, mask), kw, "student_hidden width"),
        ((hs, ws, ht, wt, mask), {**kw, "ratio": 1.01}, "ratio"),
        ((hs, ws, ht, wt, mask), {**kw, "ratio": 0}, "ratio"),
        ((hs, ws, ht, wt, mask), {**kw, "rule": "soft-or"}, "rule='soft-or'.*entropy_sample"),
        ((hs, ws, ht, wt, mask), {**kw, "divergence": "kl"}, "divergence='kl'.*rkl, fkl, jsd"),
        ((hs, ws, ht, wt, mask), {**kw, "chunk_size": 0}, "chunk_size"),
        ((hs, ws, ht, wt, mask), {**kw, "backward": "scan"}, "backward='scan'.*fused, remat"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            selection.distill_loss(*args, **kwargs)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        selection.token_stats(jnp.zeros((1, 2, 5)), jnp.zeros((1, 2, 6)), jnp.ones((1, 2)))


@pytest.mark.parametrize("backward", ["fused", "remat"])
def test_loss_grad_memory_scales_with_chunks_not_with_positions(backward):
    """AOT temp bytes: the remat'd chunked loss must stay far below materialising [T, V] logits."""
    t, d, v = 4096, 64, 16384
    abstract = (
        jax.ShapeDtypeStruct((1, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((1, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((1, t), jnp.float32),
    )

    def temp(loss):
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*abstract).compile().memory_analysis().temp_size_in_bytes

    def tip(hs, ws, ht, wt, mask):
        return selection.distill_loss(hs, ws, ht, wt, mask, rule="soft_or", ratio=0.5, rng=jax.random.PRNGKey(0), chunk_size=128, backward=backward)[0]

    def naive(hs, ws, ht, wt, mask):
        return dense_loss(hs, ws, ht, wt, mask, "rkl")

    one_logits = t * v * 4
    assert temp(naive) >= 2 * one_logits
    assert temp(tip) < 0.25 * one_logits


@pytest.mark.parametrize("rule,ratio", [("all", 1.0), ("soft_or", 0.5)])
def test_default_divergence_is_reverse_kl(rule, ratio):
    """Without divergence=: mean over kept tokens of sum_v p_s (log p_s - log p_t) (Eq. 1), not the forward KL."""
    hs, ws, ht, wt, mask = inputs(9)
    hs = 3.0 * hs  # a sharper student than teacher, so the two KL directions are far apart
    rng = jax.random.PRNGKey(0)
    value, _ = jax.jit(functools.partial(selection.distill_loss, rule=rule, ratio=ratio, rng=rng))(hs, ws, ht, wt, mask)
    keep = kept_positions(hs, ws, ht, wt, mask, rule, ratio, rng) > 0
    ls = ref.log_softmax(np.asarray(hs, np.float64) @ np.asarray(ws, np.float64))
    lt = ref.log_softmax(np.asarray(ht, np.float64) @ np.asarray(wt, np.float64))
    reverse = np.sum(np.exp(ls) * (ls - lt), -1)[keep].mean()
    forward = np.sum(np.exp(lt) * (lt - ls), -1)[keep].mean()
    np.testing.assert_allclose(float(value), reverse, rtol=1e-5)
    assert abs(forward - reverse) > 0.05 * reverse


@pytest.mark.parametrize("backward", ["fused", "remat"])
def test_fp32_master_head_is_used_in_the_compute_dtype(backward):
    """bf16 hidden states against an fp32 master head (the trainer's mixed precision): the loss projects in bf16
    with fp32 accumulation, as Decoder.logits does when the sampler draws, so it scores the sampler's logits.
    Promoting to fp32 instead made the head matmul and its two gradients TF32 GEMMs on an H200 (0.27 s of a
    1.7 s update)."""
    hs, ws, ht, wt, mask = inputs(11)
    hs, ht = hs.astype(jnp.bfloat16), ht.astype(jnp.bfloat16)

    def tip(hs, ws):
        return selection.distill_loss(
            hs, ws, ht, wt, mask, rule="soft_or", ratio=0.5, rng=jax.random.PRNGKey(0), chunk_size=4, backward=backward
        )[0]

    fn = jax.value_and_grad(tip, argnums=(0, 1))
    dots = [e for e in jaxpr_walk.equations(jax.make_jaxpr(fn)(hs, ws)) if e.primitive.name == "dot_general"]
    assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars), [
        [str(v.aval) for v in e.invars] for e in dots]
    # The value equals the loss of the head rounded to bf16 beforehand: the same logits as the sampler's.
    value, grads = jax.jit(fn)(hs, ws)
    rounded, _ = jax.jit(fn)(hs, ws.astype(jnp.bfloat16).astype(jnp.float32))
    assert float(value) == float(rounded)
    assert grads[1].dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(grads[1])))
