"""Evaluation: the CLI end to end on a tiny random Qwen3, and the metrics against a scripted sampler."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fixtures_tokenizer import build_tokenizer, read_jsonl, repo_root, save_tiny_qwen3, shared_data_dir
from tipjax import config_loader
from tipjax import data
from tipjax import eval as tev
from tipjax import sampling
from tipjax.grading import grade

MATH500 = shared_data_dir() / "math500.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"), tokenizer)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "tipjax.eval", *args], cwd=repo_root(), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_cli_end_to_end_on_real_math500_rows(model_dir, tokenizer, tmp_path):
    out = tmp_path / "report.json"
    result = _run_cli("--model", str(model_dir), "--data", str(MATH500), "--limit", "4", "--n", "2",
                      "--max-new-tokens", "16", "--batch-size", "4", "--seed", "3", "--keep-samples",
                      "--out", str(out))
    report = json.loads(out.read_text())
    d = report["datasets"]["math500"]
    rows = read_jsonl("math500.jsonl", 4)
    assert (d["n_problems"], d["n_samples"], d["n"], d["n_rows"]) == (4, 8, 2, 4)
    assert 0.0 <= d["mean_at_n"] <= d["pass_at_n"] <= 1.0
    assert set(d["by_level"]) == {str(r["level"]) for r in rows}
    assert set(d["by_subject"]) == {r["subject"] for r in rows}
    assert sum(v["n_problems"] for v in d["by_level"].values()) == 4
    # Per-problem results agree with the summary and with grading the stored responses again.
    problems = d["problems"]
    assert [p["answer"] for p in problems] == [r["answer"] for r in rows]
    correct = np.array([p["correct"] for p in problems])
    assert correct.shape == (4, 2) and d["mean_at_n"] == pytest.approx(correct.mean())
    for p in problems:
        assert p["correct"] == [int(grade(text, p["answer"])) for text in p["responses"]]
        assert all(1 <= n <= 16 for n in p["lengths"])
    lengths = np.array([p["lengths"] for p in problems])
    assert d["mean_response_length"] == pytest.approx(lengths.mean())
    # A sample shorter than the budget stopped at EOS, so truncation is at most the full-length share.
    assert d["truncation_rate"] <= np.mean(lengths == 16) + 1e-9
    # 8 samples in 2 batches of 4 rows; every batch shape is (4, a power-of-two bucket of some prompt).
    options = data.PromptOptions()
    prompt_lengths = [len(tokenizer(data.render(tokenizer, data.prompt_messages(r, options), options),
                                    add_special_tokens=False)["input_ids"]) for r in rows]
    buckets = {max(16, 1 << (n - 1).bit_length()) for n in prompt_lengths}
    assert d["timing"]["generate_calls"] == 2
    assert {tuple(s) for s in d["timing"]["batch_shapes"]} <= {(4, b) for b in buckets}
    assert report["timing"]["sampling_s"] > 0 and report["timing"]["grading_s"] >= 0
    assert "math500" in result.stdout and "mean@2" in result.stdout


def test_cli_config_form_runs_the_paper_sets(model_dir, tmp_path):
    out = tmp_path / "report.json"
    _run_cli("--config=configs/eval_math.py:tiny", "--config.max_new_tokens=4", "--model", str(model_dir),
             "--out", str(out))
    report = json.loads(out.read_text())
    assert list(report["datasets"]) == ["math500", "aime24", "aime25"]
    assert report["settings"]["max_new_tokens"] == 4 and report["settings"]["temperature"] == 1.0
    for d in report["datasets"].values():
        assert d["n_problems"] == 2 and d["n_samples"] == 4
        assert all(n <= 4 for p in d["problems"] for n in p["lengths"])


def test_flags_override_the_config_and_bad_keys_fail():
    cfg = tev.parse_args(["--config=configs/eval_math.py", "--config.n=4", "--n", "8", "--top-k", "20"])
    assert (cfg.n, cfg.top_k, cfg.temperature, cfg.top_p) == (8, 20, 1.0, 1.0)
    assert cfg.data == ("math500.jsonl", "aime24.jsonl", "aime25.jsonl")
    assert all(p.is_file() for p in tev._data_paths(cfg))
    cli = tev.parse_args(["--data", "a.jsonl", "b.jsonl", "--model", "m"])
    assert (cli.data, cli.data_dir, cli.n) == (("a.jsonl", "b.jsonl"), "", 16)
    with pytest.raises(config_loader.ConfigError, match="nn"):
        tev.parse_args(["--config=configs/eval_math.py", "--config.nn=4"])
    with pytest.raises(config_loader.ConfigError, match="needs --config"):
        tev.parse_args(["--config.n=4"])


def test_decode_attention_switch(model_dir):
    """--decode-attention reaches the loaded model's config; a bad value from a config file is a one-line
    usage error naming the flag, before anything loads."""
    cfg = tev.parse_args(["--model", str(model_dir), "--data", "a.jsonl", "--decode-attention", "xla"])
    assert cfg.decode_attention == "xla" and tev.parse_args(["--model", "m"]).decode_attention == "auto"
    assert tev.resolve_model(model_dir, decode_attention="xla").model.config.decode_attention == "xla"
    bad = tev.parse_args(["--config=configs/eval_math.py", "--config.decode_attention=flash", "--model", "m"])
    with pytest.raises(tev.cli.UsageError, match="decode_attention='flash' must be one of auto, xla, pallas"):
        tev.check_settings(bad)
    # This model's head_dim is 8: the kernel cannot take it, said before any weights load.
    with pytest.raises(tev.cli.UsageError, match="decode_attention='pallas' needs power-of-two .* and 8"):
        tev.resolve_model(model_dir, decode_attention="pallas")


def test_resolve_model_rejects_a_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        tev.resolve_model(tmp_path)


def _scripted_generate(tokenizer, answers_by_prompt):
    """A stand-in sampler: the k-th sample of prompt i is right iff (i + k) % 3 == 0, else it rambles and
    hits the token budget. Counts per prompt, so it relies only on samples of a prompt arriving in order."""
    seen = {}
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(model, prompt_ids, prompt_mask, *, max_new_tokens, rng, num_samples=1, **settings):
        rows = []
        prompt_ids, prompt_mask = (np.repeat(np.asarray(x), num_samples, axis=0) for x in (prompt_ids, prompt_mask))
        for ids, mask in zip(prompt_ids, prompt_mask):
            index, answer = answers_by_prompt[tuple(ids[mask > 0])]
            k = seen.get(index, 0)
            seen[index] = k + 1
            if (index + k) % 3 == 0:
                rows.append((tokenizer.encode(f"So \\boxed{{{answer}}}.") + [eos], False))
            else:
                rows.append(((tokenizer.encode(" no idea") * max_new_tokens)[:max_new_tokens], True))
        width = prompt_ids.shape[1]
        tokens = np.zeros((len(rows), width + max_new_tokens), np.int32)
        mask = np.zeros_like(tokens)
        for r, (response, _) in enumerate(rows):
            tokens[r, width:width + len(response)] = response
            mask[r, width:width + len(response)] = 1
        return sampling.SampleOutput(tokens=tokens, response_mask=mask, logprobs=np.zeros(tokens.shape, np.float32),
                                     lengths=mask.sum(1).astype(np.int32),
                                     truncated=np.array([t for _, t in rows]))

    return generate


@pytest.mark.parametrize("n, batch_size, sharing", [(5, 7, 1), (5, 10, 5), (6, 3, 3)])
def test_metrics_with_a_scripted_sampler(tokenizer, n, batch_size, sharing):
    """Whatever the batching, the samples reach their problems in order: with whole prompts per batch (or whole
    batches per prompt) each generate call gets each prompt once and num_samples (the shared prompt keys)."""
    limit, max_new = 12, 24
    prompts = data.load_prompts(MATH500, tokenizer, limit=limit)
    answers = {tuple(p.token_ids): (p.index, p.answer) for p in prompts.prompts}
    calls = []
    scripted = _scripted_generate(tokenizer, answers)

    def generate(model, prompt_ids, prompt_mask, **kw):
        calls.append((np.asarray(prompt_ids).shape[0], kw.get("num_samples", 1)))
        return scripted(model, prompt_ids, prompt_mask, **kw)

    report = tev.evaluate(None, tokenizer, prompts, n=n, max_new_tokens=max_new, batch_size=batch_size,
                          progress=False, generate=generate)
    assert set(calls) == {(batch_size // sharing, sharing)} and report["timing"]["rows_sharing_a_prompt"] == sharing
    expected = np.array([[(i + k) % 3 == 0 for k in range(n)] for i in range(limit)], float)
    per_problem = expected.mean(1)
    solved = (expected.sum(1) > 0).astype(float)
    assert [p["correct"] for p in report["problems"]] == expected.astype(int).tolist()
    assert report["mean_at_n"] == pytest.approx(per_problem.mean())
    se = np.sqrt(((per_problem - per_problem.mean()) ** 2).sum() / (limit - 1) / limit)
    assert report["mean_at_n_se"] == pytest.approx(se)
    assert report["pass_at_n"] == pytest.approx(solved.mean())
    assert report["mean_at_n_std_over_samples"] == pytest.approx(np.std(expected.mean(0), ddof=1))
    assert report["truncation_rate"] == pytest.approx(1 - expected.mean())
    rows = read_jsonl("math500.jsonl", limit)
    for level in {str(r["level"]) for r in rows}:
        members = [i for i, r in enumerate(rows) if str(r["level"]) == level]
        assert report["by_level"][level]["mean_at_n"] == pytest.approx(per_problem[members].mean())
        assert report["by_level"][level]["n_problems"] == len(members)
    assert report["timing"]["generate_calls"] == len(calls) == -(-limit * n // batch_size)
