"""Prompt pipeline on real rows of ../shared/data with a tokenizer trained in the test."""

import json
import re

import numpy as np
import pytest

from fixtures_tokenizer import build_tokenizer, read_jsonl, shared_data_dir
from tipjax import data

MATH500 = shared_data_dir() / "math500.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def math_prompts(tokenizer):
    return data.load_prompts(MATH500, tokenizer, limit=64)


def _options(**kwargs) -> data.LoaderOptions:
    return data.LoaderOptions(**{"batch_size": 4, "shard_index": 0, "shard_count": 1, **kwargs})


def _order(prompt_set, **kwargs) -> list[int]:
    return [int(i) for batch in data.make_iterator(prompt_set, 0, _options(**kwargs)) for i in batch["indices"]]


def test_prompt_is_problem_plus_instruction_in_the_chat_template(tokenizer):
    row = read_jsonl("math500.jsonl", 1)[0]
    prompt = data.load_prompts(MATH500, tokenizer, limit=1).prompts[0]
    expected = (f"<|im_start|>user\n{row['problem']} {data.INSTRUCTION}<|im_end|>\n"
                "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tokenizer.decode(prompt.token_ids) == expected
    thinking = data.load_prompts(MATH500, tokenizer, data.PromptOptions(enable_thinking=True), limit=1)
    assert tokenizer.decode(thinking.prompts[0].token_ids).endswith("<|im_start|>assistant\n")
    assert prompt.answer == row["answer"] and prompt.metadata["level"] == row["level"]


def test_gold_answers_per_dataset(tokenizer):
    gsm = data.load_prompts(shared_data_dir() / "gsm8k_test.jsonl", tokenizer, limit=50)
    for prompt, row in zip(gsm.prompts, read_jsonl("gsm8k_test.jsonl", 50)):
        assert prompt.answer == row["answer"].split("####")[-1].strip().replace(",", "")
        assert re.fullmatch(r"-?\d+(\.\d+)?", prompt.answer), prompt.answer
    amc = data.load_prompts(shared_data_dir() / "amc23.jsonl", tokenizer)
    assert [p.answer for p in amc.prompts] == [str(int(r["answer"])) for r in read_jsonl("amc23.jsonl")]
    assert data.gold_answer(2.5) == "2.5"
    assert data.gold_answer("The total is 1,234.\n#### 1,234") == "1234"
    aime = data.load_prompts(shared_data_dir() / "aime24.jsonl", tokenizer)
    assert [p.answer for p in aime.prompts] == [r["answer"] for r in read_jsonl("aime24.jsonl")]


def test_batches_are_left_padded_to_a_bucket(math_prompts):
    batch = next(data.make_iterator(math_prompts, 7, _options(buckets=(256, 512, 1024), shuffle=False)))
    lengths = [len(math_prompts.prompts[i].token_ids) for i in batch["indices"]]
    width = batch["prompt_ids"].shape[1]
    assert width == min(b for b in (256, 512, 1024) if b >= max(lengths))
    for row, (i, n) in enumerate(zip(batch["indices"], lengths)):
        assert batch["prompt_mask"][row].tolist() == [0] * (width - n) + [1] * n
        assert (batch["prompt_ids"][row, width - n:] == math_prompts.prompts[i].token_ids).all()
        assert (batch["prompt_ids"][row, :width - n] == 7).all()
    rows = read_jsonl("math500.jsonl", 64)
    assert list(batch["answers"]) == [rows[i]["answer"] for i in batch["indices"]]
    assert list(batch["subject"]) == [rows[i]["subject"] for i in batch["indices"]]
    assert batch["prompt_ids"].dtype == np.int32 and batch["prompt_mask"].dtype == np.int32


def test_shuffle_is_deterministic_per_seed_and_differs_across_seeds_and_epochs(math_prompts):
    first = _order(math_prompts, seed=3)
    assert first == _order(math_prompts, seed=3)
    assert first != _order(math_prompts, seed=4)
    assert sorted(first) == list(range(64))  # a permutation: every row once per epoch
    two_epochs = _order(math_prompts, seed=3, num_epochs=2)
    assert two_epochs[:64] == first and sorted(two_epochs[64:]) == sorted(first) and two_epochs[64:] != first


def test_resume_from_saved_iterator_state_gives_the_same_next_batches(math_prompts):
    it = data.make_iterator(math_prompts, 0, _options(seed=5, num_epochs=None))
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a round trip through a checkpoint file
    expected = [next(it) for _ in range(20)]  # crosses the epoch boundary (16 batches per epoch)
    resumed = data.make_iterator(math_prompts, 0, _options(seed=5, num_epochs=None))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert got["indices"].tolist() == want["indices"].tolist()
        assert (got["prompt_ids"] == want["prompt_ids"]).all()


def test_process_shards_are_disjoint_and_equal_sized(math_prompts):
    shards = [_order(math_prompts, shard_index=k, shard_count=3, batch_size=3, seed=1) for k in range(3)]
    seen = [set(s) for s in shards]
    assert all(len(s) == 21 for s in shards)  # 64 rows -> 3 x 21, one row dropped so batch counts agree
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert len(seen[0] | seen[1] | seen[2]) == 63
    with pytest.raises(ValueError, match="shard_index"):
        _order(math_prompts, shard_index=3, shard_count=3)


def test_malformed_line_names_file_and_line(tmp_path, tokenizer):
    lines = [json.dumps(r) for r in read_jsonl("math500.jsonl", 4)]
    lines[2] = lines[2][:-5]  # a truncated JSON object on line 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(data.PromptFileError, match=rf"{bad}:3: malformed JSON"):
        data.load_prompts(bad, tokenizer)
    missing = tmp_path / "noprompt.jsonl"
    missing.write_text(lines[0] + "\n" + json.dumps({"answer": "3"}) + "\n")
    with pytest.raises(data.PromptFileError, match=rf"{missing}:2: no prompt"):
        data.load_prompts(missing, tokenizer)


def test_overlong_prompts_are_skipped_or_truncated_and_counted(tokenizer):
    full = data.load_prompts(MATH500, tokenizer, limit=40)
    lengths = [len(p.token_ids) for p in full.prompts]
    cap = int(np.median(lengths))
    n_long = sum(n > cap for n in lengths)
    skipped = data.load_prompts(MATH500, tokenizer, data.PromptOptions(max_prompt_length=cap), limit=40)
    assert (skipped.n_skipped, skipped.n_truncated, skipped.n_rows) == (n_long, 0, 40)
    assert [p.index for p in skipped.prompts] == [p.index for p, n in zip(full.prompts, lengths) if n <= cap]
    cut = data.load_prompts(MATH500, tokenizer, data.PromptOptions(max_prompt_length=cap, overlong="truncate"),
                            limit=40)
    assert (cut.n_skipped, cut.n_truncated, len(cut.prompts)) == (0, n_long, 40)
    for short, original in zip(cut.prompts, full.prompts):
        assert (short.token_ids == original.token_ids[-cap:]).all()  # the end (instruction, template) survives


def test_parquet_and_nested_fields(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_jsonl("aime25.jsonl", 5)
    table = pa.table({
        "prompt": [[{"role": "user", "content": r["problem"]}] for r in rows],
        "reward_model": [{"ground_truth": r["answer"]} for r in rows],
    })
    path = tmp_path / "dapo_like.parquet"
    pq.write_table(table, path)
    options = data.PromptOptions(answer_field="reward_model.ground_truth")
    prompts = data.load_prompts(path, tokenizer, options)
    assert [p.answer for p in prompts.prompts] == [r["answer"] for r in rows]
    # A chat-message prompt is used as is: no instruction appended.
    assert data.INSTRUCTION not in tokenizer.decode(prompts.prompts[0].token_ids)
    assert rows[0]["problem"] in tokenizer.decode(prompts.prompts[0].token_ids)
