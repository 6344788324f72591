"""SFT warm start: the response-only loss against a numpy re-statement, micro-batch invariance, learning on the
arithmetic task, export through transformers, resumable batches and bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from tipjax import config_loader, eval as tev, export, models, sft, sft_data, tasks, workdir as workdir_lib
from tipjax.config_loader import ConfigError
from tipjax.metrics_log import read_metrics
from tipjax.config_checks import validate_sft
from tipjax.config_schema import SFTConfig

ARITH = "configs/sft_arithmetic.py"


def tiny_cfg(*overrides) -> SFTConfig:
    """A 1-layer model on one-step, one-digit sums: learnable in a few dozen steps on a CPU."""
    base = ["--config.student.arch.hidden_size=64", "--config.student.arch.num_hidden_layers=1",
            "--config.student.arch.num_attention_heads=2", "--config.student.arch.num_key_value_heads=2",
            "--config.student.arch.intermediate_size=128", "--config.data.difficulty.steps=1",
            "--config.data.difficulty.digits=1", "--config.data.n_examples=128", "--config.batch_size=16",
            "--config.data.max_response_length=16", "--config.optim.learning_rate=0.01",
            "--config.optim.warmup_steps=2", "--config.total_steps=40", "--config.checkpoint.every=20",
            "--config.checkpoint.keep=3"]
    return config_loader.to_dataclass(config_loader.load_config(ARITH, base + list(overrides)), SFTConfig)


def test_tokenized_pairs_are_prompt_then_response_and_eos():
    cfg = tiny_cfg()
    task = tasks.get("arithmetic")
    tok = task.tokenizer()
    examples = task.generate(4, 0, "train", steps=1, digits=1)
    s = sft_data.tokenize(sft_data.pairs(dataclasses.replace(cfg.data, n_examples=4)), tok, cfg.data)
    assert s.prompt_ids.shape == (4, cfg.data.max_prompt_length) and s.response_ids.shape == (4, 16)
    for row, example in enumerate(examples):
        prompt = tok.decode(s.prompt_ids[row][s.prompt_mask[row] > 0])
        assert prompt.endswith("<|im_start|>assistant\n") and example.problem in prompt
        assert s.prompt_mask[row, -1] == 1 and s.response_mask[row, 0] == 1  # left / right padded
        response = s.response_ids[row][s.response_mask[row] > 0]
        assert response[-1] == tok.eos_token_id and tok.decode(response[:-1]) == example.solution


def test_loss_is_the_mean_over_response_tokens_and_micro_batching_does_not_change_it():
    cfg = tiny_cfg()
    s = sft.setup(cfg)
    sft_set = sft_data.tokenize(sft_data.pairs(cfg.data), s.tokenizer, cfg.data)
    batch = next(sft_data.SFTBatches(sft_set, 8, seed=0))
    # numpy re-statement: log-softmax of the full-sequence logits, next-token targets, response mask only.
    logits = np.asarray(s.student(jnp.asarray(batch["tokens"]), positions=models.positions_from_mask(
        jnp.asarray(batch["seq_mask"])), attention_mask=jnp.asarray(batch["seq_mask"])), np.float64)
    tp = cfg.data.max_prompt_length
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    targets = batch["tokens"][:, tp:]
    nll = -np.take_along_axis(logp[:, tp - 1:-1], targets[..., None], -1)[..., 0]
    expected = (nll * batch["loss_mask"]).sum() / batch["loss_mask"].sum()

    losses = []
    for m in (1, 4):
        run = dataclasses.replace(cfg, micro_batches=m)
        step = jax.jit(sft.build_step(s.optimization.optimizer, s.optimization.schedule, micro_batches=m))
        state = s.optimization.init_fn(s.student, jax.random.PRNGKey(0))
        new_state, metrics = step(state, *(jnp.asarray(batch[k]) for k in ("tokens", "seq_mask", "loss_mask")))
        assert int(metrics["response_tokens"]) == batch["loss_mask"].sum() and run.micro_batches == m
        losses.append((float(metrics["loss"]), new_state.model))
    np.testing.assert_allclose(losses[0][0], expected, rtol=1e-5)
    np.testing.assert_allclose(losses[1][0], expected, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(losses[0][1]), jax.tree.leaves(losses[1][1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_loss_falls_and_the_run_exports_to_transformers(tmp_path):
    cfg = tiny_cfg()
    sft.train(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert rows[0]["loss"] > 3.0 and np.mean([r["loss"] for r in rows[-5:]]) < 1.5, (rows[0]["loss"], rows[-1])
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["20", "40"]

    # Export: transformers loads the folder (tokenizer included) and computes the same logits in fp32.
    assert export.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) is None
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.get_vocab() == tasks.get("arithmetic").tokenizer().get_vocab()
    ids = np.asarray(hf_tok(["<|im_start|>user\nCompute 3+4.", "12+30=42. \\boxed{42}<|im_end|>"],
                            add_special_tokens=False, padding="max_length", max_length=24)["input_ids"])
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(workdir_lib.load_student(tmp_path / "run")(jnp.asarray(ids, jnp.int32)))
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5

    # eval reads the workdir directly (its tokenizer folder) and the trained model answers some sums.
    loaded = tev.resolve_model(tmp_path / "run")
    problems = tasks.write_examples(tmp_path / "eval.jsonl", tasks.get("arithmetic").generate(
        16, 0, "eval", steps=1, digits=1), "arithmetic", "eval")
    report = tev.evaluate(loaded.model, loaded.tokenizer, problems, n=1, temperature=0.0, max_new_tokens=16,
                          batch_size=16, eos_token_ids=loaded.eos_token_ids, progress=False,
                          prompt_options=tasks.get("arithmetic").prompt_options())
    assert report["mean_response_length"] < 16 and report["truncation_rate"] < 0.5  # it learned to stop


def test_batches_resume_where_they_stopped():
    cfg = tiny_cfg()
    sft_set = sft_data.tokenize(sft_data.pairs(cfg.data), tasks.get("arithmetic").tokenizer(), cfg.data)
    a = sft_data.SFTBatches(sft_set, 24, seed=3)  # 5 batches per epoch: the walk crosses an epoch boundary
    seen = [next(a)["tokens"] for _ in range(7)]
    b = sft_data.SFTBatches(sft_set, 24, seed=3)
    b.set_state({"position": 4})
    for k in range(4, 7):
        np.testing.assert_array_equal(next(b)["tokens"], seen[k])
    assert not np.array_equal(seen[0], seen[5])  # a new permutation in epoch 2


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ConfigError, match="data.task"):
        validate_sft(dataclasses.replace(tiny_cfg(), data=dataclasses.replace(tiny_cfg().data, source="x.jsonl")))
    with pytest.raises(ConfigError, match="micro_batches"):
        validate_sft(tiny_cfg("--config.micro_batches=3"))
    with pytest.raises(config_loader.ConfigError, match="batch_sz"):
        tiny_cfg("--config.batch_sz=3")
    with pytest.raises(tasks.TaskError, match="digits"):
        sft.train(tiny_cfg("--config.data.difficulty.digits=0"), tmp_path / "run")
    assert sft.main(["--config=" + ARITH, "--workdir", str(tmp_path / "w"), "--config.total_steps=0"]) == 2
