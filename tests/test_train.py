"""The OPD trainer on the tiny config: learning, one compiled program, mesh equivalence, bad input."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from tipjax import config_loader, config_schema, export, paper_variants, train, workdir as workdir_lib
from tipjax.metrics_log import read_metrics

TINY = "configs/tiny.py"


def tiny(variant=None, *overrides):
    return config_loader.to_dataclass(config_loader.load_config(TINY + (f":{variant}" if variant else ""), list(overrides)),
                             config_schema.TrainConfig)


def one_device(cfg, **changes):
    return dataclasses.replace(cfg, mesh=config_schema.MeshSpec(data=1, fsdp=1, tensor=1), **changes)


@pytest.mark.parametrize("variant", ["all", "soft_or50", "entropy50", "q3_20"])
def test_loss_falls_on_fresh_rollouts(tmp_path, variant):
    cfg = one_device(tiny(variant, "--config.total_steps=14", "--config.checkpoint.every=7"))
    train.train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 15))
    first, last = rows[0]["rkl_all"], np.mean([r["rkl_all"] for r in rows[-3:]])
    assert last < 0.75 * first, (variant, first, last)
    expected_kept = paper_variants.VARIANTS[variant][1]
    assert abs(rows[-1]["kept_fraction"] - expected_kept) < 0.1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["14", "7"]
    timed = [r for r in rows if "rollout_tokens_per_s" in r]  # configs/tiny.py: timing_every = 10
    assert [r["step"] for r in timed] == [10] and timed[0]["rollout_tokens_per_s"] > timed[0]["tokens_per_s"]
    assert list((tmp_path / "tensorboard").iterdir())


def test_step_is_one_program_compiled_once_without_callbacks():
    cfg = one_device(tiny("soft_or50"))
    s = train.setup(cfg)
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    from tipjax.prompt_source import SyntheticPrompts

    source = SyntheticPrompts(cfg.data, cfg.prompts_per_step, 256)
    batch = next(source)
    hlo = s.step_fn.lower(state, s.teacher, batch["prompt_ids"], batch["prompt_mask"]).as_text()
    assert "callback" not in hlo.lower() and "while" in hlo
    for _ in range(3):
        batch = next(source)
        state, _ = s.step_fn(state, s.teacher, batch["prompt_ids"], batch["prompt_mask"])
    assert s.step_fn._cache_size() == 1
    assert int(state.step) == 3


def _one_step(cfg):
    s = train.setup(cfg)
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    from tipjax.prompt_source import SyntheticPrompts

    batch = next(SyntheticPrompts(cfg.data, cfg.prompts_per_step, 256))
    ids, mask = (jax.device_put(batch[k], s.batch_sharding) for k in ("prompt_ids", "prompt_mask"))
    state, metrics = s.step_fn(state, s.teacher, ids, mask)
    return state, metrics


@functools.lru_cache(maxsize=None)
def _greedy_baseline(variant):
    # Greedy rollouts, so tiny float differences between layouts cannot flip a sampled token.
    base = tiny(variant, "--config.rollout.temperature=0.0")
    return base, _one_step(one_device(base))


@pytest.mark.parametrize("variant, change", [
    ("soft_or50", "mesh 2x2x2"),      # fake 8-device mesh (data x fsdp x tensor) vs one device
    ("all", "micro_batches 4"),       # gradient accumulation over micro-batches vs one batch (token mean)
    ("soft_or50", "rollout groups 4"),  # sampling in sequential row groups vs all rows at once
])
def test_step_layouts_equal_the_single_device_step(variant, change):
    base, (ref_state, ref_metrics) = _greedy_baseline(variant)
    if change == "mesh 2x2x2":
        cfg = dataclasses.replace(base, mesh=config_schema.MeshSpec(data=2, fsdp=2, tensor=2))
    elif change == "micro_batches 4":
        cfg = one_device(base, micro_batches=4)
    else:
        cfg = one_device(base, rollout=dataclasses.replace(base.rollout, groups=4))
    state, metrics = _one_step(cfg)
    if change == "mesh 2x2x2":
        spec = tuple(state.model.blocks.wq.sharding.spec)
        assert spec + (None,) * (4 - len(spec)) == (None, "fsdp", "tensor", None)  # layers, embed, q_heads, head_dim
    assert float(metrics["response_tokens"]) == float(ref_metrics["response_tokens"])
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_state.model), jax.tree.leaves(state.model)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_non_finite_loss_skips_the_update():
    cfg = one_device(tiny("all"))
    s = train.setup(cfg)
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    before = [np.asarray(x).copy() for x in jax.tree.leaves(state.model)]
    poisoned = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), s.teacher)
    from tipjax.prompt_source import SyntheticPrompts

    batch = next(SyntheticPrompts(cfg.data, cfg.prompts_per_step, 256))
    state, metrics = s.step_fn(state, poisoned, batch["prompt_ids"], batch["prompt_mask"])
    assert int(metrics["skipped_update"]) == 1 and int(state.skipped) == 1 and int(state.step) == 1
    for a, b in zip(before, jax.tree.leaves(state.model)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_export_round_trip_through_transformers(tmp_path):
    cfg = one_device(tiny("soft_or50", "--config.total_steps=4", "--config.checkpoint.every=2"))
    train.train(cfg, tmp_path / "run")
    student = workdir_lib.load_student(tmp_path / "run")
    export.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "hf")])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = np.random.default_rng(0).integers(0, 256, (2, 12))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(student(jnp.asarray(ids, jnp.int32)))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5
    # The exported weights are the step-4 weights, not the initial ones.
    early = workdir_lib.load_student(tmp_path / "run", step=2)
    assert not np.array_equal(np.asarray(early.embed[...]), np.asarray(student.embed[...]))


def test_bad_input_fails_early_with_names(tmp_path):
    with pytest.raises(ValueError, match="ratio"):
        train.validate(tiny(None, "--config.selection.ratio=0.0"))
    with pytest.raises(ValueError, match="rule"):
        train.validate(tiny(None, "--config.selection.rule=top_entropy"))
    with pytest.raises(config_loader.ConfigError, match="optim.lr"):
        tiny(None, "--config.optim.lr=1e-3")
    cfg = tiny()
    missing = dataclasses.replace(cfg, teacher=config_schema.ModelSpec(path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="teacher.path"):
        train.validate(missing)
    bigger_vocab = dict(cfg.teacher.arch, vocab_size=300)
    with pytest.raises(ValueError, match="vocab"):
        train.setup(one_device(dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, arch=bigger_vocab))))


def _tokenizer_folder(path, template):
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "hello", "world", "what", "is"])}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.chat_template = template
    fast.save_pretrained(path)
    return str(path)


def test_chat_template_mismatch_is_an_error_before_compiling(tmp_path):
    from tipjax import tokenization

    a = tokenization.load_tokenizer(_tokenizer_folder(tmp_path / "a", "{% for m in messages %}{{ m['content'] }}{% endfor %}"))
    b = tokenization.load_tokenizer(_tokenizer_folder(tmp_path / "b", "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"))
    tokenization.check_tokenizers(a, a)
    with pytest.raises(tokenization.IncompatibleModels, match="chat templates"):
        tokenization.check_tokenizers(a, b)
    assert tokenization.shared_vocab(151936, 152064, a) == len(a)


def test_prompt_file_training_with_periodic_eval_and_eval_of_the_workdir(tmp_path):
    """Real MATH-500 prompts through the chat template; eval during training and on the run's checkpoint."""
    from fixtures_tokenizer import build_tokenizer, save_tiny_qwen3, shared_data_dir

    from tipjax import eval as tev

    tokenizer = build_tokenizer(n_rows=200, vocab_size=600)
    student = save_tiny_qwen3(tmp_path / "student", tokenizer, seed=0)
    teacher = save_tiny_qwen3(tmp_path / "teacher", tokenizer, seed=1)
    cfg = tiny("soft_or50", f"--config.student.path={student}", f"--config.teacher.path={teacher}",
               f"--config.data.source={shared_data_dir() / 'math500.jsonl'}", "--config.data.max_prompt_length=256",
               "--config.rollout.max_new_tokens=8", "--config.total_steps=2", "--config.checkpoint.every=2",
               "--config.eval.every=2", "--config.eval.datasets=('aime24.jsonl',)", "--config.eval.samples=2",
               "--config.eval.limit=2", "--config.eval.max_new_tokens=8", "--config.eval.batch_size=4")
    cfg = one_device(dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, arch=None),
                                         teacher=dataclasses.replace(cfg.teacher, arch=None)))
    train.validate(cfg)
    train.train(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    evals = [r for r in rows if "eval/aime24/mean_at_n" in r]
    assert len(evals) == 1 and 0.0 <= evals[0]["eval/aime24/mean_at_n"] <= 1.0
    loaded = tev.resolve_model(tmp_path / "run")
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    trained = workdir_lib.load_student(tmp_path / "run")
    np.testing.assert_array_equal(np.asarray(loaded.model.embed[...]), np.asarray(trained.embed[...]))
    report = tev.evaluate(loaded.model, loaded.tokenizer, shared_data_dir() / "aime24.jsonl", n=1, limit=2,
                          max_new_tokens=8, batch_size=2, progress=False)
    assert report["n_problems"] == 2
