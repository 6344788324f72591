"""Small restatements that pin down maths the end-to-end tests cannot see (each found by mutation testing):
RMSNorm's eps inside the square root, gradient accumulation dividing by the weight sum, a skipped update
keeping the optimizer state, and the sampler's log-probabilities under the unmodified distribution."""

import jax
import jax.numpy as jnp
import numpy as np

from tipjax import models, optim, sampling
from tipjax.models import layers
from tipjax.config_schema import OptimSpec


def test_rms_norm_puts_eps_inside_the_square_root():
    x = np.random.default_rng(0).normal(scale=0.05, size=(3, 16)).astype(np.float32)
    weight = np.linspace(0.5, 2.0, 16).astype(np.float32)
    eps = 1e-2  # large against mean(x^2) ~ 2.5e-3, so eps placement changes the result by ~2x
    expected = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + eps) * weight
    np.testing.assert_allclose(layers.rms_norm(jnp.asarray(x), jnp.asarray(weight), eps), expected, rtol=1e-5)


def test_accumulate_returns_the_weighted_mean_gradient():
    """Two micro-batches with weights 1 and 3: loss and gradient are sum(w * l) / sum(w), as for one batch."""
    rows = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 1.0]], np.float32)
    weights = np.array([1.0, 3.0, 1.0, 3.0], np.float32)  # rows.split(m=2): part 0 = rows 0, 2; part 1 = 1, 3
    params = {"w": jnp.asarray([0.3, -0.7])}

    def loss_fn(p, part, _):
        per_row = (part["x"] @ p["w"] - 1.0) ** 2
        weight = jnp.sum(part["weight"])
        return jnp.sum(per_row * part["weight"]), ({}, weight)

    batch = {"x": jnp.asarray(rows), "weight": jnp.asarray(weights)}
    loss, grads, _, weight_sum = optim.accumulate(loss_fn, params, batch, 2)
    w = np.array([0.3, -0.7])
    resid = rows @ w - 1.0
    total = weights.sum()
    np.testing.assert_allclose(weight_sum, total)
    np.testing.assert_allclose(loss, np.sum(weights * resid**2) / total, rtol=1e-6)
    np.testing.assert_allclose(grads["w"], (2 * weights * resid) @ rows / total, rtol=1e-5)


def test_skipped_update_keeps_params_and_optimizer_state():
    spec = OptimSpec(learning_rate=1e-2)
    optimizer, schedule = optim.build_optimizer(spec, 10), optim.learning_rate_schedule(spec, 10)
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    state = optim.init_state(params, jax.random.key(0), optimizer=optimizer)
    state, _ = optim.apply_update(state, jnp.float32(1.0), {"w": jnp.asarray([0.1, 0.2, -0.3])}, optimizer, schedule,
                                  rng=jax.random.key(1))
    before = jax.tree.map(np.asarray, (state.model, state.opt_state))
    bad = {"w": jnp.asarray([np.nan, 0.2, -0.3])}
    skipped, metrics = optim.apply_update(state, jnp.float32(1.0), bad, optimizer, schedule, rng=jax.random.key(2))
    assert int(metrics["skipped_update"]) == 1 and int(skipped.skipped_run) == 1
    for got, want in zip(jax.tree.leaves((skipped.model, skipped.opt_state)), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(got), want)
    # The next finite update proceeds from clean moments.
    after, _ = optim.apply_update(skipped, jnp.float32(1.0), {"w": jnp.asarray([0.1, 0.2, -0.3])}, optimizer,
                                  schedule, rng=jax.random.key(3))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((after.model, after.opt_state)))


def test_sampled_logprobs_are_under_the_unmodified_model_at_any_temperature():
    cfg = models.ModelConfig.from_hf_dict({
        "architectures": ["Qwen3ForCausalLM"], "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True})
    model = models.init(cfg, jax.random.key(0))
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 5)), jnp.int32)
    mask = jnp.asarray([[1] * 5, [0, 0, 1, 1, 1]], jnp.int32)
    out = sampling.generate(model, prompt, mask, max_new_tokens=6, temperature=0.6, rng=jax.random.key(2))
    seq_mask = jnp.concatenate([mask, out.response_mask[:, 5:]], axis=1)
    logits = model(out.tokens, positions=models.positions_from_mask(seq_mask), attention_mask=seq_mask)
    logp = jax.nn.log_softmax(logits[:, 4:-1], axis=-1)  # column t predicts token t + 1
    expected = jnp.take_along_axis(logp, out.tokens[:, 5:, None], axis=-1)[..., 0]
    resp = np.asarray(out.response_mask[:, 5:]).astype(bool)
    assert resp.sum() == 12
    np.testing.assert_allclose(np.asarray(out.logprobs[:, 5:])[resp], np.asarray(expected)[resp], atol=1e-4)
