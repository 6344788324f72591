"""The step differentiates the positions the sampler drew: trainer forward vs sampler log-probabilities, and
micro-batch accumulation weighted by kept tokens when micro-batches keep different numbers of tokens."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tipjax import config_loader, config_schema, models, paper_variants, sampling, step as step_lib, train
from tipjax.prompt_source import SyntheticPrompts


def _tiny(variant, *overrides):
    cfg = config_loader.to_dataclass(config_loader.load_config(f"configs/tiny.py:{variant}", list(overrides)), config_schema.TrainConfig)
    return dataclasses.replace(cfg, mesh=config_schema.MeshSpec(1, 1, 1))


def _rollout(model, n_new=12):
    cfg = _tiny("all")
    prompts = next(SyntheticPrompts(cfg.data, 3, model.config.vocab_size))
    kwargs = dict(max_new_tokens=n_new, temperature=1.0, rng=jax.random.key(1), num_samples=2)
    free = sampling.generate(model, prompts["prompt_ids"], prompts["prompt_mask"], **kwargs)
    # A stop token the model actually draws (row 0, 4th token), so rows end at different lengths.
    eos = int(free.tokens[0, prompts["prompt_ids"].shape[1] + 3])
    out = sampling.generate(model, prompts["prompt_ids"], prompts["prompt_mask"], eos_token_id=eos, **kwargs)
    seq_mask = jnp.concatenate([jnp.repeat(jnp.asarray(prompts["prompt_mask"]), 2, axis=0),
                                out.response_mask[:, prompts["prompt_ids"].shape[1]:]], axis=1)
    return out, seq_mask, prompts["prompt_ids"].shape[1]


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_response_hidden_reproduces_the_sampler_logprobs(which):
    cfg = _tiny("all")
    spec = cfg.student if which == "student" else cfg.teacher
    model = models.init(models.ModelConfig.from_hf_dict(dict(spec.arch)), jax.random.PRNGKey(spec.init_seed))
    out, seq_mask, prompt_len = _rollout(model)
    resp = np.asarray(out.response_mask[:, prompt_len:]) > 0
    assert resp.sum() > 10 and not resp.all()  # some rows stopped early: padding is exercised
    hidden = step_lib.response_hidden(model, out.tokens, seq_mask, prompt_len)  # [B, N, D]
    logp = jax.nn.log_softmax(model.logits(hidden), axis=-1)
    drawn = jnp.take_along_axis(logp, out.tokens[:, prompt_len:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(drawn)[resp], np.asarray(out.logprobs[:, prompt_len:])[resp],
                               atol=2e-5, rtol=0)


@pytest.mark.parametrize("variant, scope", [
    ("all", "batch"),          # one pass, micro-batch losses weighted by their kept-token counts
    ("soft_or50", "batch"),    # statistics pass over the whole batch, then the gradient pass
    ("q3_20", "rollout"),
])
def test_micro_batches_with_different_kept_counts_equal_one_batch(variant, scope):
    """One sample per prompt, greedy: rows differ in length, so micro-batches keep different token counts."""
    base = _tiny(variant, "--config.rollout.temperature=0.0", "--config.rollout.samples_per_prompt=1",
                 "--config.prompts_per_step=8", "--config.rollout.max_new_tokens=24",
                 f"--config.selection.options={{'norm_scope': '{scope}'}}")
    batch = next(SyntheticPrompts(base.data, base.prompts_per_step, 256))
    student = train.setup(base).student
    free = sampling.generate(student, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=24,
                             temperature=0.0, rng=jax.random.key(0))
    # A stop token the greedy student emits in row 0: rows then end at different lengths.
    eos = int(free.tokens[0, batch["prompt_ids"].shape[1] + 5])
    base = dataclasses.replace(base, rollout=dataclasses.replace(base.rollout, eos_token_id=(eos,)))
    results = {}
    for m in (1, 4):
        cfg = dataclasses.replace(base, micro_batches=m)
        s = train.setup(cfg)
        state = s.init_fn(s.student, jax.random.PRNGKey(0))
        # Precondition: the rows' response lengths, hence each micro-batch's kept counts, differ.
        lengths = np.asarray(s.rollout_fn(state, batch["prompt_ids"], batch["prompt_mask"]))
        kept = np.floor(paper_variants.VARIANTS[variant][1] * lengths)
        per_part = [kept[j::4].sum() for j in range(4)]
        assert len(set(per_part)) > 1, per_part
        new_state, metrics = s.step_fn(state, s.teacher, batch["prompt_ids"], batch["prompt_mask"])
        results[m] = (float(metrics["loss"]), jax.tree.leaves(new_state.model), metrics)
        assert float(metrics["logprob_gap_max"]) < 1e-4  # trainer and sampler agree on every drawn token
    np.testing.assert_allclose(results[4][0], results[1][0], rtol=1e-5)
    for key in ("n_kept", "kept_fraction", "q1", "q2", "q3", "q4", "rkl_kept"):  # whole-batch metrics
        np.testing.assert_allclose(float(results[4][2][key]), float(results[1][2][key]), rtol=1e-5, err_msg=key)
    for a, b in zip(results[1][1], results[4][1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
