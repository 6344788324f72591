"""Teacher-only context: the step's teacher scores the student's response after its own, separately padded prompt,
at exactly the positions a transformers teacher run on [teacher prompt + response] text predicts it; bad input is a
one-line error naming the key or the row."""

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from tipjax import config_loader, config_schema, data, prompt_source, step as step_lib, teacher_context, train

TEMPLATE = "{problem}\n\nA correct solution:\n{solution}\n\nNow solve it yourself."
SYSTEM = "You are a patient teacher."
SUFFIX = " Check every step."
ROWS = [  # prompt lengths differ, so rows are left padded by different amounts in both buckets
    {"problem": "What is 2+3?", "solution": "2+3 = 5.", "answer": "5"},
    {"problem": "Compute the sum of the first ten positive integers, then double it.",
     "solution": "The sum is 55, and twice that is 110.", "answer": "110"},
    {"problem": "Find x if 3x = 12.", "solution": "Divide by 3: x = 4.", "answer": "4"},
    {"problem": "How many sides does a regular hexagon have, and what is the sum of its interior angles?",
     "solution": "Six sides; (6 - 2) * 180 = 720 degrees.", "answer": "720"},
]


@functools.lru_cache(maxsize=None)
def _assets(root):
    from fixtures_tokenizer import build_tokenizer, save_tiny_qwen3

    tokenizer = build_tokenizer(n_rows=200, vocab_size=600)
    student = save_tiny_qwen3(f"{root}/student", tokenizer, seed=0)
    teacher = save_tiny_qwen3(f"{root}/teacher", tokenizer, seed=1)
    prompts = f"{root}/prompts.jsonl"
    with open(prompts, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in ROWS)
    return tokenizer, str(student), str(teacher), prompts


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return _assets(str(tmp_path_factory.mktemp("teacher_context")))


def config(assets, *overrides, context=True, source="model"):
    tokenizer, student, teacher, prompts = assets
    eos = (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    extra = [f"--config.data.teacher_template={TEMPLATE}", f"--config.data.teacher_system_prompt={SYSTEM}",
             f"--config.data.teacher_suffix={SUFFIX}", "--config.data.teacher_max_prompt_length=224"] if context else []
    cfg = config_loader.to_dataclass(config_loader.load_config("configs/tiny.py:all", [
        f"--config.student.path={student}", f"--config.data.source={prompts}",
        "--config.data.max_prompt_length=112",
        "--config.rollout.temperature=0.0", "--config.rollout.max_new_tokens=8", "--config.rollout.samples_per_prompt=2",
        f"--config.rollout.eos_token_id={eos}", "--config.prompts_per_step=4", "--config.selection.chunk_size=16",
        *extra, *overrides]), config_schema.TrainConfig)
    teacher_spec = dataclasses.replace(cfg.teacher, arch=None, path=teacher if source == "model" else None,
                                       source=source)
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, arch=None), teacher=teacher_spec,
                               mesh=config_schema.MeshSpec(1, 1, 1))


def first_step(cfg, steps=1):
    """(setup, initial state, batch, [(state, metrics)] per step) on the first prompt batch, repeated."""
    train.validate(cfg)
    s = train.setup(cfg)
    batch = next(prompt_source.make_prompt_source(cfg.data, cfg.prompts_per_step, tokenizer=s.tokenizer,
                                                  vocab_size=s.student.config.vocab_size))
    state0 = s.init_fn(s.student, jax.random.PRNGKey(0))
    params0 = [np.asarray(x).copy() for x in jax.tree.leaves(state0.model)]
    arrays = [batch[k] for k in prompt_source.STEP_KEYS if k in batch]
    out, state = [], state0
    for _ in range(steps):
        state, metrics = s.step_fn(state, s.teacher, *arrays)
        out.append((state, jax.device_get(metrics)))
    return s, params0, batch, out


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _reference_teacher_text(tokenizer, row):
    """The teacher prompt written out by hand: system message, template with the instruction, then the suffix."""
    user = TEMPLATE.format(**row) + " " + data.INSTRUCTION + SUFFIX
    return tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                                         add_generation_prompt=True, tokenize=False)


def test_teacher_positions_match_transformers_on_the_concatenated_text(assets):
    tokenizer, student_path, teacher_path, _ = assets
    cfg = config(assets)
    s, _, batch, [(_, metrics)] = first_step(cfg)
    t_mask, p_mask = batch["teacher_prompt_mask"], batch["prompt_mask"]
    assert t_mask.shape[1] == 224 and p_mask.shape[1] == 112
    assert len(set(t_mask.sum(1))) == len(ROWS) and len(set(p_mask.sum(1))) == len(ROWS)  # different padding
    hf_student, hf_teacher = _hf(student_path), _hf(teacher_path)
    eos = cfg.rollout.eos_token_id[0]
    references = [tokenizer(_reference_teacher_text(tokenizer, r), add_special_tokens=False)["input_ids"]
                  for r in ROWS]
    rows, responses, loss_terms = [], [], []
    for i in range(len(ROWS)):
        # The teacher's prompt, rendered independently of tipjax, is a row's unpadded teacher ids, and the
        # student's prompt in the same batch row is that row's problem.
        unpadded = batch["teacher_prompt_ids"][i][t_mask[i] > 0].tolist()
        assert unpadded in references
        row = ROWS[references.index(unpadded)]
        rows.append(row)
        ref_ids = unpadded
        assert row["problem"] in tokenizer.decode(batch["prompt_ids"][i][p_mask[i] > 0])
        # The greedy response of the transformers student to the student's prompt (eos included).
        s_ids = torch.tensor(batch["prompt_ids"][i][p_mask[i] > 0][None].astype(np.int64))
        gen = hf_student.generate(s_ids, attention_mask=torch.ones_like(s_ids), do_sample=False, max_new_tokens=8,
                                  eos_token_id=eos, pad_token_id=eos)[0, s_ids.shape[1]:].tolist()
        resp = gen[:gen.index(eos) + 1] if eos in gen else gen
        responses.append(resp)
        with torch.no_grad():
            t_logits = hf_teacher(torch.tensor([ref_ids + resp])).logits[0, len(ref_ids) - 1:-1].double()
            s_logits = hf_student(torch.tensor([s_ids[0].tolist() + resp])).logits[0, s_ids.shape[1] - 1:-1].double()
        log_s, log_t = torch.log_softmax(s_logits, -1), torch.log_softmax(t_logits, -1)
        loss_terms += (log_s.exp() * (log_s - log_t)).sum(-1).tolist()  # reverse KL per response token
    # The step: rule "all", token mean of reverse KL over every response token of every (identical greedy) sample.
    assert float(metrics["response_tokens"]) == cfg.rollout.samples_per_prompt * sum(len(r) for r in responses)
    np.testing.assert_allclose(float(metrics["loss"]), np.mean(loss_terms), rtol=2e-4)

    # Position by position: teacher_sequences + response_hidden on the left-padded rows vs transformers.
    n_new = cfg.rollout.max_new_tokens
    resp_tokens = np.full((len(rows), n_new), eos, np.int32)
    resp_mask = np.zeros((len(rows), n_new), np.int32)
    for i, r in enumerate(responses):
        resp_tokens[i, :len(r)], resp_mask[i, :len(r)] = r, 1
    tokens, seq_mask = step_lib.teacher_sequences(batch["teacher_prompt_ids"], t_mask, resp_tokens, resp_mask, 1)
    hidden = step_lib.response_hidden(s.teacher, tokens, seq_mask, t_mask.shape[1])
    ours = np.asarray(s.teacher.logits(hidden))
    for i, (row, r) in enumerate(zip(rows, responses)):
        ref_ids = tokenizer(_reference_teacher_text(tokenizer, row), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = hf_teacher(torch.tensor([ref_ids + r])).logits[0, len(ref_ids) - 1:-1].numpy()
        np.testing.assert_allclose(ours[i, :len(r)], ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_a_teacher_prompt_equal_to_the_students_gives_the_step_without_context(assets):
    """Template "{problem}" renders the student's own prompt, padded to another width: same loss, same update."""
    _, _, ref, [(ref_state, ref_metrics)] = first_step(config(assets, context=False))
    _, _, batch, [(state, metrics)] = first_step(config(assets, "--config.data.teacher_template={problem}",
                                                        "--config.data.teacher_max_prompt_length=160", context=False))
    assert batch["teacher_prompt_ids"].shape[1] == 160 and "teacher_prompt_ids" not in ref
    np.testing.assert_array_equal(batch["teacher_prompt_ids"][:, -112:], batch["prompt_ids"])
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_state.model), jax.tree.leaves(state.model)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_bad_teacher_context_is_a_one_line_error_naming_the_key_or_row(assets, tmp_path):
    tokenizer, _, _, prompts = assets
    with pytest.raises(config_loader.ConfigError, match=r"data.teacher_template.*\{0\} is not a field name"):
        train.validate(config(assets, "--config.data.teacher_template={0}"))
    with pytest.raises(config_loader.ConfigError, match="data.teacher_template"):
        train.validate(config(assets, "--config.data.teacher_template={problem"))
    with pytest.raises(config_loader.ConfigError, match="needs a prompt file"):
        train.validate(config(assets, "--config.data.source=synthetic"))
    # A field the rows lack: named with the file and line, before any model loads (train() checks rows first).
    cfg = config(assets, "--config.data.teacher_template={problem} {hint}")
    with pytest.raises(data.PromptFileError, match=r"prompts.jsonl:1: no field 'hint' for data.teacher_template"):
        train.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # One row without the field: its line is named.
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r if i != 2 else {"problem": "x", "answer": "1"}) + "\n"
                           for i, r in enumerate(ROWS)))
    with pytest.raises(data.PromptFileError, match=r"bad.jsonl:3: no field 'solution'"):
        data.load_prompts(bad, tokenizer, teacher=teacher_context.TeacherContext(template=TEMPLATE))
    # A teacher prompt longer than its bucket is an error naming the row and the key (never cut).
    with pytest.raises(data.PromptFileError, match=r"prompts.jsonl:\d+: the teacher prompt has \d+ tokens, more than "
                                                   r"data.teacher_max_prompt_length=40"):
        data.load_prompts(prompts, tokenizer, teacher=teacher_context.TeacherContext(template=TEMPLATE,
                                                                                    max_prompt_length=40))
