"""Built-in tasks: arithmetic generation checked by an independent evaluator, fixed disjoint splits, the
character tokenizer (round trip, grading, chat template, saved folder) and SFT pairs."""

import ast
import json
import re

import numpy as np
import pytest

from tipjax import data, sampling, tasks
from tipjax.grading import grade
from tipjax.tasks import tokenizer as task_tokenizer

STEP = re.compile(r"(-?\d+)([+\-*])(\d+)=(-?\d+)\.")


@pytest.fixture(scope="module")
def task():
    return tasks.get("arithmetic")


@pytest.fixture(scope="module")
def tok(task):
    return task.tokenizer()


def _evaluate(node):
    """Standard-precedence value of an expression tree, written apart from the generator's left-to-right loop."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        ops = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}
        return ops[type(node.op)]
    raise AssertionError(f"unexpected syntax {ast.dump(node)}")


def _expression(problem):
    match = re.fullmatch(r"Compute ([0-9+\-*()]+)\.", problem)
    assert match, problem
    return match.group(1)


def _check(example):
    """Every step's arithmetic, the chain between steps, and the answer against the problem's own value."""
    expression = _expression(example.problem)
    body, boxed = example.solution.rsplit(" \\boxed{", 1)
    assert boxed == example.answer + "}"
    steps = body.split(" ")
    operands = [int(x) for x in re.findall(r"\d+", expression)]
    value = operands[0]
    for k, text in enumerate(steps):
        match = STEP.fullmatch(text)
        assert match, text
        left, op, right, result = match.groups()
        assert int(left) == value and int(right) == operands[k + 1]
        assert int(result) == _evaluate(ast.parse(f"({left}){op}{right}", mode="eval"))
        value = int(result)
    assert len(steps) == len(operands) - 1
    assert str(value) == example.answer == str(_evaluate(ast.parse(expression, mode="eval")))
    return steps, operands


def test_generation_is_deterministic_and_distinct(task):
    a = task.generate(200, seed=3, split="train", operators="+-*", steps=3)
    assert a == task.generate(200, seed=3, split="train", operators="+-*", steps=3)
    assert a != task.generate(200, seed=4, split="train", operators="+-*", steps=3)
    assert len({e.problem for e in a}) == 200
    assert all(isinstance(e.answer, str) for e in a)


@pytest.mark.parametrize("knobs", [{}, {"operators": "+-*", "steps": 4}, {"operators": "*-", "digits": 1},
                                   {"operators": "-", "steps": 3, "negative": True}, {"digits": 5, "steps": 1}])
def test_every_step_is_right(task, knobs):
    for split in tasks.SPLITS:
        for example in task.generate(150, seed=1, split=split, **knobs):
            _check(example)


def test_difficulty_knobs(task):
    for steps, digits in [(1, 1), (3, 2), (5, 4)]:
        for example in task.generate(100, seed=0, steps=steps, digits=digits, operators="+-*", negative=True):
            found, operands = _check(example)
            assert len(found) == steps
            assert all(len(str(x)) == digits for x in operands)
    counts = {len(_check(e)[0]) for e in task.generate(300, seed=0, steps=4, min_steps=2)}
    assert counts == {2, 3, 4}
    only_plus = task.generate(50, seed=0, operators="+", steps=3)
    assert all(set(re.sub(r"[\d.]", "", _expression(e.problem))) == {"+"} for e in only_plus)
    # Without `negative`, no intermediate result drops below zero; with it, some do.
    kept = task.generate(300, seed=0, operators="-", steps=3)
    assert all(not re.search(r"=-", e.solution) for e in kept)
    free = task.generate(300, seed=0, operators="-", steps=3, negative=True)
    assert any(int(e.answer) < 0 for e in free)
    # Multiplication after an addition is parenthesised, so ordinary precedence gives the answer.
    mixed = task.generate(300, seed=0, operators="+*", steps=3)
    assert any("(" in e.problem for e in mixed)


def test_splits_are_fixed_and_disjoint(task):
    for knobs in [{}, {"digits": 1, "steps": 1}]:
        train = {e.problem for s in range(4) for e in task.generate(60 if knobs else 400, seed=s, **knobs)}
        held = {e.problem for s in range(4) for e in task.generate(15 if knobs else 400, seed=s, split="eval", **knobs)}
        assert train and held and not train & held
        assert {task.split_of(p) for p in train} == {"train"} and {task.split_of(p) for p in held} == {"eval"}
    # The split is a property of the expression, not the prose or the knobs that produced it.
    problem = next(iter(held))
    assert task.split_of(" ".join(_expression(problem))) == "eval"
    shares = [task.split_of(f"Compute {a}+{b}.") for a in range(100) for b in range(100)]
    assert shares.count("eval") / len(shares) == pytest.approx(task.eval_fraction, abs=0.02)


def test_bad_requests_name_the_parameter(task):
    cases = [({"n": 0}, r"\(n\)$"), ({"split": "test"}, r"\(split\)$"), ({"stepz": 2}, r"\(stepz\)$"),
             ({"steps": 0}, r"\(steps\)$"), ({"steps": 2, "min_steps": 3}, r"\(min_steps\)$"),
             ({"digits": 0}, r"\(digits\)$"), ({"operators": "+/"}, r"\(operators\)$"),
             ({"operators": "++"}, r"\(operators\)$"), ({"steps": "2"}, r"\(steps\)$"), ({"digits": True}, r"\(digits\)$")]
    for kwargs, key in cases:
        kwargs = {"n": 5, **kwargs}
        with pytest.raises(tasks.TaskError, match=key):
            task.generate(**kwargs)
    # Too few one-digit sums exist for 300 held-out ones: a clear error instead of an endless loop.
    with pytest.raises(tasks.TaskError, match=r"found only \d+ distinct eval problems"):
        task.generate(300, split="eval", digits=1, steps=1)
    with pytest.raises(tasks.TaskError, match=r"unknown task 'nope'.*\(task\)$"):
        tasks.get("nope")


def test_tokenizer_round_trip_and_grading(task, tok):
    assert len(tok) == tok.vocab_size == task_tokenizer.VOCAB_SIZE == 104
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "<|im_end|>", "<unk>")
    assert tok.pad_token_id == 0
    for example in task.generate(100, seed=2, operators="+-*", steps=3, negative=True):
        ids = tok(example.solution, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.convert_tokens_to_ids("\\boxed{") in ids
        text = tok.decode(ids + [tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True)
        assert text == example.solution
        assert grade(text, example.answer)
        wrong = text.replace(f"\\boxed{{{example.answer}}}", f"\\boxed{{{int(example.answer) + 1}}}")
        assert not grade(wrong, example.answer)
        assert not grade(text[: text.rindex("\\boxed")], example.answer)
    # Digits stay single tokens: numbers are spelled out.
    assert tok.convert_ids_to_tokens(tok("1234", add_special_tokens=False)["input_ids"]) == ["1", "2", "3", "4"]
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_saved_folder_loads_with_autotokenizer(task, tok, tmp_path):
    from transformers import AutoTokenizer

    folder = task.save_tokenizer(tmp_path / "tok")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == task_tokenizer.CHATML_TEMPLATE
    assert (config["eos_token"], config["pad_token"], config["tokenizer_class"]) == (
        "<|im_end|>", "<pad>", "PreTrainedTokenizerFast")
    loaded = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 1+2."},
                {"role": "assistant", "content": "1+2=3. \\boxed{3}"}, {"role": "user", "content": "And 2+2?"}]
    by_hand = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompute 1+2.<|im_end|>\n"
               "<|im_start|>assistant\n1+2=3. \\boxed{3}<|im_end|>\n<|im_start|>user\nAnd 2+2?<|im_end|>\n"
               "<|im_start|>assistant\n")
    for t in (tok, loaded):
        assert t.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == by_hand
        assert t.apply_chat_template(messages[:1], tokenize=False) == "<|im_start|>system\nBe brief.<|im_end|>\n"
    assert loaded(by_hand, add_special_tokens=False)["input_ids"] == tok(by_hand, add_special_tokens=False)["input_ids"]
    assert loaded.get_vocab() == tok.get_vocab()
    ids = tok(by_hand, add_special_tokens=False)["input_ids"]
    assert ids[:3] == [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "system", "\n")]


@pytest.mark.parametrize("options", ["default", "task"])
def test_prompts_tokenize_without_unknowns(task, tok, tmp_path, options):
    examples = task.generate(40, seed=0, split="eval", operators="+-*", steps=3)
    path = tasks.write_examples(tmp_path / "eval.jsonl", examples, task.name, "eval")
    opts = data.PromptOptions() if options == "default" else task.prompt_options()
    prompts = data.load_prompts(path, tok, opts)
    assert [p.answer for p in prompts.prompts] == [e.answer for e in examples]
    instruction = data.INSTRUCTION if options == "default" else "Answer in \\boxed{}."
    for prompt, example in zip(prompts.prompts, examples):
        assert tok.unk_token_id not in prompt.token_ids.tolist()
        text = tok.decode(prompt.token_ids)
        assert text == (f"<|im_start|>user\n{example.problem} {instruction}<|im_end|>\n<|im_start|>assistant\n")
    lengths = [len(p.token_ids) for p in prompts.prompts]
    assert max(lengths) < (128 if options == "default" else 64)


def test_sft_pairs_match_the_prompt_pipeline(task, tmp_path):
    pairs = list(task.sft_examples(20, seed=5, steps=3))
    examples = task.generate(20, seed=5, steps=3)
    assert [r for _, r in pairs] == [e.solution for e in examples]
    assert pairs[0][0] == [{"role": "user", "content": f"{examples[0].problem} Answer in \\boxed{{}}."}]
    with pytest.raises(tasks.TaskError, match=r"\(digits\)$"):
        task.sft_examples(20, digits=0)  # checked at the call, not at the first next()
    path = tasks.write_examples(tmp_path / "train.jsonl", examples, task.name, "train")
    assert list(tasks.read_sft_examples(path, task.prompt_options())) == pairs
    (tmp_path / "bad.jsonl").write_text(json.dumps({"problem": "Compute 1+1.", "answer": "2"}) + "\n")
    with pytest.raises(data.PromptFileError, match=r"bad.jsonl:1: no 'solution'"):
        list(tasks.read_sft_examples(tmp_path / "bad.jsonl"))


def test_eval_grades_gold_solutions_as_right(task, tok, tmp_path):
    """tipjax.eval on a task file, with a stand-in sampler that answers with the gold solution (or a wrong one)."""
    from tipjax import eval as tev
    examples = task.generate(6, seed=0, split="eval")
    path = tasks.write_examples(tmp_path / "eval.jsonl", examples, task.name, "eval")
    prompts = data.load_prompts(path, tok, task.prompt_options())
    gold = {tuple(p.token_ids): examples[p.index] for p in prompts.prompts}

    def generate(model, prompt_ids, prompt_mask, *, max_new_tokens, **settings):
        rows = []
        for sample, (ids, mask) in enumerate(zip(np.asarray(prompt_ids), np.asarray(prompt_mask))):
            example = gold[tuple(ids[mask > 0])]
            text = example.solution if sample % 2 == 0 else f"\\boxed{{{int(example.answer) + 1}}}"
            rows.append(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        tokens = np.zeros((len(rows), prompt_ids.shape[1] + max_new_tokens), np.int32)
        mask = np.zeros_like(tokens)
        for r, ids in enumerate(rows):
            tokens[r, prompt_ids.shape[1]:prompt_ids.shape[1] + len(ids)] = ids
            mask[r, prompt_ids.shape[1]:prompt_ids.shape[1] + len(ids)] = 1
        return sampling.SampleOutput(tokens=tokens, response_mask=mask, logprobs=np.zeros(tokens.shape, np.float32),
                                     lengths=mask.sum(1).astype(np.int32), truncated=np.zeros(len(rows), bool))

    report = tev.evaluate(None, tok, prompts, n=1, max_new_tokens=48, batch_size=2, progress=False,
                          generate=generate)
    assert report["mean_at_n"] == pytest.approx(0.5)
    assert sorted(p["n_correct"] for p in report["problems"]) == [0, 0, 0, 1, 1, 1]
