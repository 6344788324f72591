"""The update runs each prompt once for its n samples (Decoder.hidden_prefixed): attention over a shared prompt then
the row against a float64 restatement, the decoder's hidden states and gradients against its forward over whole
prompt-then-row sequences, and the training step against the step that repeats every prompt per row."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import jaxpr_walk
import numpy as np
import pytest

from tipjax import build, config_loader, config_schema, models, rows, step as step_lib, train
from tipjax.models import attention
from tipjax.prompt_source import SyntheticPrompts

P, SAMPLES, TP, T = 2, 3, 5, 7   # prompts, samples per prompt, prompt columns, row columns
B = P * SAMPLES


def masks(seed=0):
    """Left-padded prompts (one fully real) and right-padded rows (one with a single real token)."""
    prompt_valid = np.ones((P, TP), bool)
    prompt_valid[0, :2] = False
    row_valid = np.ones((B, T), bool)
    row_valid[1, 4:] = False
    row_valid[4, 1:] = False
    return prompt_valid, row_valid


def test_split_keeps_a_prompts_rows_together():
    x = np.arange(24)[:, None] * 10 + np.arange(2)  # 6 prompts x 4 samples, two columns
    parts = np.asarray(rows.split(x, 3, group=4))
    for j in range(3):  # part j: the rows of prompts j and j + 3, in order
        want = np.concatenate([x[p * 4:(p + 1) * 4] for p in range(j, 6, 3)])
        np.testing.assert_array_equal(parts[j], want)
    np.testing.assert_array_equal(np.asarray(rows.merge(parts, group=4)), x)
    np.testing.assert_array_equal(np.asarray(rows.split(x, 3)), np.asarray(rows.split(x, 3, group=1)))


def reference(q, k, v, prompt_k, prompt_v, prompt_valid, row_valid):
    """float64: row b's query j sees prompt b // n's real keys and its own real keys 0 .. j."""
    q, k, v, prompt_k, prompt_v = (np.asarray(x, np.float64) for x in (q, k, v, prompt_k, prompt_v))
    b, t, n_heads, h = q.shape
    g = n_heads // k.shape[2]
    out = np.zeros_like(q)
    for row in range(b):
        p = row // (b // prompt_k.shape[0])
        keys, values = np.concatenate([prompt_k[p], k[row]]), np.concatenate([prompt_v[p], v[row]])
        for j in range(t):
            seen = np.concatenate([prompt_valid[p], row_valid[row] & (np.arange(t) <= j)])
            for head in range(n_heads):
                scores = keys[seen, head // g] @ q[row, j, head] / np.sqrt(h)
                w = np.exp(scores - scores.max())
                out[row, j, head] = (w / w.sum()) @ values[seen, head // g]
    return out


@pytest.mark.parametrize("backend, chunk", [("xla", 3), ("xla", 64), ("xla_sdpa", 64)])
def test_prefixed_attention_equals_the_whole_sequence(backend, chunk):
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (B, T, 4, 8))
    k, v = (jax.random.normal(x, (B, T, 2, 8)) for x in keys[1:3])
    prompt_k, prompt_v = (jax.random.normal(x, (P, TP, 2, 8)) for x in keys[3:])
    prompt_valid, row_valid = masks()
    out = attention.prefixed_attention(q, k, v, jnp.asarray(row_valid), prompt_k, prompt_v, jnp.asarray(prompt_valid),
                                       backend=backend, query_chunk=chunk)
    want = reference(q, k, v, prompt_k, prompt_v, prompt_valid, row_valid)
    real = row_valid  # a padded query's output is read by nothing
    np.testing.assert_allclose(np.asarray(out)[real], want[real], atol=2e-5, rtol=1e-5)


def test_prefixed_attention_splash_interpret():
    """The fused path's queries and keys (prompt repeated, prompt queries zero) through splash in interpret mode."""
    tp, t = 64, 64
    keys = jax.random.split(jax.random.key(1), 5)
    q = jax.random.normal(keys[0], (2, t, 2, 128))
    k, v = (jax.random.normal(x, (2, t, 1, 128)) for x in keys[1:3])
    prompt_k, prompt_v = (jax.random.normal(x, (1, tp, 1, 128)) for x in keys[3:])
    prompt_valid = np.arange(tp)[None] >= 20
    row_valid = np.arange(t)[None] < np.array([[50], [64]])
    out = attention.prefixed_attention(q, k, v, jnp.asarray(row_valid), prompt_k, prompt_v, jnp.asarray(prompt_valid),
                                       backend="splash")
    want = reference(q, k, v, prompt_k, prompt_v, prompt_valid, row_valid)
    np.testing.assert_allclose(np.asarray(out)[row_valid], want[row_valid], atol=2e-5, rtol=1e-5)


def _model(arch, backend):
    cfg = models.ModelConfig(architecture=arch, vocab_size=97, hidden_size=64, num_layers=2, num_heads=4,
                             num_kv_heads=2, head_dim=16, intermediate_size=96, qk_norm=arch == "Qwen3ForCausalLM",
                             qkv_bias=arch == "Qwen2ForCausalLM", param_dtype="float32", compute_dtype="float32",
                             attention=backend, query_chunk=4)
    return models.init(cfg, jax.random.key(3))


@pytest.mark.parametrize("arch, backend", [("Qwen3ForCausalLM", "xla"), ("Qwen2ForCausalLM", "xla"),
                                           ("Qwen3ForCausalLM", "xla_sdpa")])
def test_hidden_prefixed_equals_the_forward_over_whole_sequences(arch, backend):
    model = _model(arch, backend)
    rng = np.random.default_rng(0)
    prompt_ids, row_ids = rng.integers(0, 97, (P, TP)), rng.integers(0, 97, (B, T))
    prompt_valid, row_valid = masks()
    ids = np.concatenate([np.repeat(prompt_ids, SAMPLES, 0), row_ids], 1)
    valid = np.concatenate([np.repeat(prompt_valid, SAMPLES, 0), row_valid], 1)

    def whole(m):
        return m.hidden(ids, positions=models.positions_from_mask(valid), attention_mask=valid)

    ref = whole(model)
    prompt_hidden, row_hidden = model.hidden_prefixed(prompt_ids, prompt_valid, row_ids, row_valid)
    np.testing.assert_allclose(np.asarray(row_hidden)[row_valid], np.asarray(ref[:, TP:])[row_valid], atol=1e-5)
    np.testing.assert_allclose(np.asarray(prompt_hidden)[prompt_valid],
                               np.asarray(ref[::SAMPLES, :TP])[prompt_valid], atol=1e-5)

    # Gradients: the prompt's one forward collects its n rows' gradients. The model's norms and rope compute in
    # fp32, so two orders of the same sums differ at ~1e-4 of the largest entry (xla vs xla_sdpa over whole
    # sequences differ as much); a prompt read for the wrong row differs at O(1).
    weights = jax.random.normal(jax.random.key(4), (B, T, 64))

    def loss_whole(m):
        return jnp.sum(jnp.where(row_valid[..., None], whole(m)[:, TP:] * weights, 0.0))

    def loss_prefixed(m):
        return jnp.sum(jnp.where(row_valid[..., None], m.hidden_prefixed(prompt_ids, prompt_valid, row_ids,
                                                                         row_valid)[1] * weights, 0.0))

    for a, b in zip(jax.tree.leaves(jax.grad(loss_whole)(model)), jax.tree.leaves(jax.grad(loss_prefixed)(model))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-3 * float(jnp.max(jnp.abs(a))) + 1e-7)


def test_hidden_prefixed_rejects_rows_that_are_not_whole_prompts():
    model = _model("Qwen3ForCausalLM", "xla")
    with pytest.raises(ValueError, match="5 rows are not a multiple of 2 prompts"):
        model.hidden_prefixed(np.zeros((2, 3), int), np.ones((2, 3)), np.zeros((5, 4), int), np.ones((5, 4)))


def _config(variant, micro_batches, share, *overrides, mesh=(1, 1, 1)):
    cfg = config_loader.to_dataclass(config_loader.load_config(f"configs/tiny.py:{variant}", [
        "--config.rollout.temperature=0.0", "--config.rollout.max_new_tokens=16",
        f"--config.rollout.share_prompt={share}", *overrides]), config_schema.TrainConfig)
    return dataclasses.replace(cfg, mesh=config_schema.MeshSpec(*mesh), micro_batches=micro_batches)


@functools.lru_cache(maxsize=None)
def _step(variant, micro_batches, share, unit="rollout", mesh=(1, 1, 1)):
    cfg = _config(variant, micro_batches, share, f"--config.selection.options={{'unit': '{unit}'}}", mesh=mesh)
    s = train.setup(cfg)
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    batch = next(SyntheticPrompts(cfg.data, cfg.prompts_per_step, 256))
    args = (state, s.teacher, batch["prompt_ids"], batch["prompt_mask"])
    new_state, metrics = s.step_fn(*args)
    # The update's layer scans: what each carries, [rows, columns, width] (the rollout's prefill carries [P, ...]).
    jaxpr = jax.make_jaxpr(s.step_fn)(*args)
    carried = {tuple(v.aval.shape) for e in jaxpr_walk.equations(jaxpr) if e.primitive.name == "scan"
               for v in e.outvars if v.aval.ndim == 3}
    return jax.device_get(metrics), [np.asarray(x) for x in jax.tree.leaves(new_state.model)], carried


@pytest.mark.parametrize("variant, micro_batches, unit, copies", [
    ("all", 1, "rollout", 1),        # one micro-batch
    ("q3_10", 2, "rollout", 1),      # micro-batches of whole prompts, selection in the loss pass
    ("soft_or50", 2, "batch", 1),    # the two-pass step: statistics pass, then the gradient pass
    ("q3_10", 8, "rollout", 2),      # more micro-batches than prompts: two copies, each for 2 samples
])
def test_step_with_prompts_run_once_equals_the_step_with_a_copy_per_row(variant, micro_batches, unit, copies):
    metrics, params, carried = _step(variant, micro_batches, True, unit)
    ref_metrics, ref_params, ref_carried = _step(variant, micro_batches, False, unit)
    # tiny.py: 4 prompts x 4 samples, prompt bucket 16, 16 new tokens, student width 64: each micro-batch runs its
    # 4 x copies / m prompt copies once next to its 16 / m rows, where the copy-per-row step runs 16 / m rows of
    # 32 columns; the teacher (width 96) likewise. (Other scans carry [2, 32, 64] at m = 8, so the teacher's
    # width tells the copy-per-row forward apart.)
    rows_m = 16 // micro_batches
    for width in (64, 96):
        assert (4 * copies // micro_batches, 16, width) in carried and (rows_m, 16, width) in carried, carried
    assert (rows_m, 32, 96) in ref_carried and (rows_m, 32, 96) not in carried, carried
    for key in ("n_kept", "kept_fraction", "loss", "rkl_all"):
        np.testing.assert_allclose(float(metrics[key]), float(ref_metrics[key]), rtol=1e-4, atol=1e-6, err_msg=key)
    # The update's log-probabilities of the sampled tokens are the sampler's (fp32 rounding apart).
    assert float(metrics["logprob_gap_max"]) < 1e-4
    for a, b in zip(ref_params, params):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_step_with_prompts_run_once_on_a_mesh():
    """Rows over data x fsdp = 4 devices, each holding one prompt and its 4 samples; tensor parallel 2."""
    metrics, params, carried = _step("all", 1, True, mesh=(2, 2, 2))
    ref_metrics, ref_params, _ = _step("all", 1, True)
    assert (4, 16, 64) in carried and (16, 16, 64) in carried, carried
    for key in ("n_kept", "loss", "rkl_all", "grad_norm"):
        np.testing.assert_allclose(float(metrics[key]), float(ref_metrics[key]), rtol=1e-4, atol=1e-6, err_msg=key)
    for a, b in zip(ref_params, params):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_update_shares_prompts_only_for_whole_prompts_per_device():
    roll = config_schema.RolloutSpec(samples_per_prompt=4)
    mesh = models.make_mesh(data=8)
    split = build.split_sharding(mesh)
    assert rows.shards(split) == 8 and rows.shards(None) == 1

    def settings(m, split_sharding, **kw):
        return step_lib.StepSettings(rollout=dataclasses.replace(roll, **kw), selection=config_schema.SelectionSpec(),
                                     eos_ids=(), vocab=8, micro_batches=m, split_sharding=split_sharding)

    def shares(prompts, m, split_sharding=split, **kw):
        return step_lib.update_shares_prompts(settings(m, split_sharding, **kw), prompts)

    def copies(prompts, m, split_sharding=split, **kw):
        return step_lib.prompt_copies(settings(m, split_sharding, **kw), prompts)

    # n = 4 samples, rows over 8 devices: micro_batches x 8 must divide P x copies
    assert shares(16, 2) and shares(8, 1) and shares(3, 3, None)
    assert copies(16, 2) == 1 and copies(8, 2) == 2   # 8 prompts for 16 slots: two copies of 2 samples each
    assert copies(4, 4) == 4 and not shares(4, 4)     # one row per device and micro-batch: nothing to share
    assert copies(3, 2, None) == 2 and copies(2, 3, None) == 4  # 3 micro-batches never divide 2 x (1, 2)
    assert not shares(16, 2, share_prompt=False)
    assert not shares(16, 2, samples_per_prompt=1)
