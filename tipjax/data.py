"""Prompt pipeline: jsonl/parquet prompt files -> chat template -> left-padded, bucketed token batches.

Two stages. ``load_prompts`` reads a whole file eagerly (prompt sets are small: DAPO is 17k rows),
renders every row through the tokenizer's chat template and tokenises it, so over-long prompts are
counted once and every later batch has a known shape. ``make_iterator`` then builds a grain pipeline
over the tokenised prompts (process shard -> seeded shuffle -> epochs -> batches) whose iterator state
can be saved with ``get_state`` and restored with ``set_state``.

A row's prompt is its first present field of ``prompt_fields`` (default problem, question, prompt).
A string prompt becomes one user message ``problem + instruction_separator + instruction`` (verl's
math convention: a single space before "Let's think step by step ..."); a prompt that is already a
list of chat messages (DAPO's parquet) is used as is. Prompts longer than ``max_prompt_length`` are
skipped, or truncated from the left so the instruction and the generation prompt survive.

Batch: prompt_ids [B, Tp] int32 (left padded, Tp a length bucket), prompt_mask [B, Tp] int32,
answers [B] object (gold strings), indices [B] int64 (0-based row in the file), and one [B] object
array per metadata field present in the file (subject, level, ...). With teacher-only context
(tipjax.teacher_context) also teacher_prompt_ids / teacher_prompt_mask [B, Tt], padded to their own bucket.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import jax
import numpy as np

from tipjax import sampling

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

log = logging.getLogger(__name__)


class PromptFileError(ValueError):
    """A prompt file or one of its rows is unusable; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class PromptOptions:
    """How rows of a prompt file become token ids and gold answers."""

    prompt_fields: tuple[str, ...] = ("problem", "question", "prompt")
    answer_field: str = "answer"  # dotted paths reach nested fields ("reward_model.ground_truth"); "" = none
    metadata_fields: tuple[str, ...] = ("subject", "level", "unique_id", "id")
    instruction: str = INSTRUCTION  # "" appends nothing
    instruction_separator: str = " "
    chat_template: bool = True  # False: the raw prompt text, no template
    enable_thinking: bool | None = False  # passed only to templates that read it (Qwen3); None = template default
    max_prompt_length: int = 2048
    overlong: Literal["skip", "truncate"] = "skip"
    answer_format: Literal["auto", "gsm8k", "plain"] = "auto"  # auto: "#### N" answers are GSM8K


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """How tokenised prompts are shuffled, sharded and batched."""

    batch_size: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1  # None repeats forever
    drop_remainder: bool = True  # fixed batch shape; the last partial batch of the run is dropped
    buckets: tuple[int, ...] | None = None  # prompt length buckets; None = sampling's powers of two
    teacher_buckets: tuple[int, ...] | None = None  # the same for teacher-only prompts (teacher_context)
    shard_index: int | None = None  # None = jax.process_index()
    shard_count: int | None = None  # None = jax.process_count()


@dataclasses.dataclass(frozen=True, eq=False)
class Prompt:
    index: int  # 0-based row in the file
    token_ids: np.ndarray  # [T] int32
    answer: str
    metadata: Mapping[str, Any]
    teacher_token_ids: np.ndarray | None = None  # [Tt] int32: the teacher-only prompt (teacher_context), if any


@dataclasses.dataclass(frozen=True, eq=False)
class PromptSet:
    path: str
    prompts: tuple[Prompt, ...]
    metadata_fields: tuple[str, ...]  # the fields of options.metadata_fields that some row has
    n_rows: int
    n_skipped: int  # longer than max_prompt_length, dropped
    n_truncated: int  # longer than max_prompt_length, cut from the left


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(1-based line or row number, row) for every row of a .jsonl or .parquet file; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # only parquet users pay for the import

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield number, row
        return
    if path.suffix not in (".jsonl", ".json"):
        raise PromptFileError(f"{path}: unsupported prompt file type {path.suffix!r}; use .jsonl or .parquet")
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise PromptFileError(f"{path}:{number}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                                      f"{err.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFileError(f"{path}:{number}: malformed JSON line: {err}") from err
            if not isinstance(row, dict):
                raise PromptFileError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _lookup(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def gold_answer(value: Any, answer_format: str = "auto") -> str:
    """The gold answer as a string: GSM8K "... #### 1,234" -> "1234"; 27.0 -> "27"; strings stripped."""
    if isinstance(value, bool):
        raise ValueError(f"a boolean is not a math answer: {value!r}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if answer_format == "gsm8k" or (answer_format == "auto" and "####" in text):
        if "####" not in text:
            raise ValueError(f"GSM8K answer without '#### N': {text[:80]!r}")
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    return text


def prompt_messages(row: Mapping[str, Any], options: PromptOptions) -> list[dict[str, str]] | None:
    """The chat messages for one row (instruction appended to a plain problem), or None if no prompt field."""
    for field in options.prompt_fields:
        value = row.get(field)
        if isinstance(value, str) and value.strip():
            text = value.strip()
            if options.instruction:
                text = f"{text}{options.instruction_separator}{options.instruction}"
            return [{"role": "user", "content": text}]
        if isinstance(value, (list, tuple)) and value and all(isinstance(m, Mapping) for m in value):
            return [{"role": m["role"], "content": m["content"]} for m in value]
    return None


def render(tokenizer, messages: list[dict[str, str]], options: PromptOptions) -> str:
    """The prompt string the model sees: the chat template with the generation prompt, or the raw text."""
    if not options.chat_template:
        return "\n\n".join(m["content"] for m in messages)
    template = tokenizer.chat_template
    if not template:
        raise PromptFileError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; set chat_template=False to use raw prompts")
    kwargs = {}
    if options.enable_thinking is not None and "enable_thinking" in template:
        kwargs["enable_thinking"] = options.enable_thinking
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


def pad_token_id(tokenizer) -> int:
    """The id used for left padding: pad, else eos, else 0 (padding is masked, so any id works)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def load_prompts(path: str | Path, tokenizer, options: PromptOptions = PromptOptions(),
                 limit: int | None = None, teacher=None) -> PromptSet:
    """Reads, templates and tokenises the first ``limit`` rows (all if None) of a prompt file.

    teacher: a teacher_context.TeacherContext; each prompt then also holds the teacher's own prompt ids.
    """
    from tipjax import teacher_context

    rows, texts, teacher_texts = [], [], []
    for number, row in read_rows(path):
        if limit is not None and len(rows) >= limit:
            break
        messages = prompt_messages(row, options)
        if messages is None:
            raise PromptFileError(f"{path}:{number}: no prompt; expected one of the fields {list(options.prompt_fields)}")
        answer = ""
        if options.answer_field:
            raw = _lookup(row, options.answer_field)
            if raw is None:
                raise PromptFileError(f"{path}:{number}: no answer field {options.answer_field!r}")
            try:
                answer = gold_answer(raw, options.answer_format)
            except ValueError as err:
                raise PromptFileError(f"{path}:{number}: {err}") from err
        rows.append((len(rows), row, answer, number))
        texts.append(render(tokenizer, messages, options))
        if teacher is not None:
            try:
                teacher_texts.append(render(tokenizer, teacher_context.teacher_messages(row, messages, teacher,
                                                                                      options), options))
            except teacher_context.ContextError as err:
                raise PromptFileError(f"{path}:{number}: {err}") from None
    if not rows:
        raise PromptFileError(f"{path}: no prompt rows")
    token_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    teacher_ids = [None] * len(rows)
    if teacher_texts:
        teacher_ids = tokenizer(teacher_texts, add_special_tokens=False)["input_ids"]
    fields = tuple(f for f in options.metadata_fields if any(f in row for _, row, _, _ in rows))
    prompts, skipped, truncated = [], 0, 0
    for (index, row, answer, number), ids, t_ids in zip(rows, token_ids, teacher_ids):
        if len(ids) > options.max_prompt_length:
            if options.overlong == "skip":
                skipped += 1
                continue
            ids, truncated = ids[-options.max_prompt_length:], truncated + 1
        if t_ids is not None and len(t_ids) > teacher.max_prompt_length:
            # Cutting privileged context would silently change what the teacher knows: an error instead.
            raise PromptFileError(f"{path}:{number}: the teacher prompt has {len(t_ids)} tokens, more than "
                                  f"data.teacher_max_prompt_length={teacher.max_prompt_length}")
        prompts.append(Prompt(index, np.asarray(ids, np.int32), answer, {f: row.get(f) for f in fields},
                              None if t_ids is None else np.asarray(t_ids, np.int32)))
    if skipped or truncated:
        log.warning("%s: %d of %d prompts longer than %d tokens (%d skipped, %d truncated from the left)",
                    path, skipped + truncated, len(rows), options.max_prompt_length, skipped, truncated)
    if not prompts:
        raise PromptFileError(f"{path}: every prompt is longer than max_prompt_length={options.max_prompt_length}")
    return PromptSet(str(path), tuple(prompts), fields, len(rows), skipped, truncated)


def left_pad(seqs: Sequence[np.ndarray], pad_id: int, buckets: tuple[int, ...] | None = None):
    """Token id sequences -> (ids, mask) [B, W] int32, left padded to the bucket W of the longest one."""
    width = sampling.bucket_size(max(len(x) for x in seqs), buckets)
    ids = np.full((len(seqs), width), pad_id, np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    return ids, mask


def collate(prompts: Sequence[Prompt], pad_id: int, buckets: tuple[int, ...] | None = None,
            teacher_buckets: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """Left-pads prompts to the bucket of the longest one; see the module docstring for the fields.
    Prompts with a teacher-only prompt also give teacher_prompt_ids / teacher_prompt_mask, padded to their own
    bucket."""
    ids, mask = left_pad([p.token_ids for p in prompts], pad_id, buckets)
    batch = {
        "prompt_ids": ids,
        "prompt_mask": mask,
        "answers": _objects([p.answer for p in prompts]),
        "indices": np.array([p.index for p in prompts], np.int64),
    }
    if prompts[0].teacher_token_ids is not None:
        batch["teacher_prompt_ids"], batch["teacher_prompt_mask"] = left_pad(
            [p.teacher_token_ids for p in prompts], pad_id, teacher_buckets)
    for field in prompts[0].metadata:
        batch[field] = _objects([p.metadata[field] for p in prompts])
    return batch


def _objects(values: list) -> np.ndarray:
    # np.array would turn equal-length strings into a fixed-width dtype or lists into a 2-D array.
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def shard(n: int, index: int, count: int) -> range:
    """Row positions of shard ``index`` of ``count``: strided, equal sized (the n % count tail is dropped)."""
    if not 0 <= index < count:
        raise ValueError(f"shard_index {index} is not in [0, {count})")
    return range(index, n - n % count, count)


def make_dataset(prompt_set: PromptSet, pad_id: int, options: LoaderOptions) -> "grain.MapDataset":
    """grain pipeline of batches: this process's shard -> seeded shuffle (new order each epoch) -> batch."""
    import grain  # here, not at the top: the schemas import this module, and a benchmark needs no loader
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {options.batch_size}")
    index = jax.process_index() if options.shard_index is None else options.shard_index
    count = jax.process_count() if options.shard_count is None else options.shard_count
    positions = shard(len(prompt_set.prompts), index, count)
    if len(positions) < options.batch_size and options.drop_remainder:
        raise ValueError(f"{prompt_set.path}: shard {index}/{count} has {len(positions)} prompts, "
                         f"fewer than one batch of {options.batch_size}")
    ds = grain.MapDataset.source([prompt_set.prompts[i] for i in positions])
    if options.shuffle:
        ds = ds.shuffle(seed=options.seed)
    ds = ds.repeat(options.num_epochs)
    return ds.batch(options.batch_size, drop_remainder=options.drop_remainder,
                    batch_fn=functools.partial(collate, pad_id=pad_id, buckets=options.buckets,
                                               teacher_buckets=options.teacher_buckets))


def make_iterator(prompt_set: PromptSet, pad_id: int, options: LoaderOptions) -> "grain.DatasetIterator":
    """An iterator of batches with ``get_state()`` / ``set_state(state)`` for checkpointing."""
    import grain

    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    return iter(make_dataset(prompt_set, pad_id, options).to_iter_dataset(read))


# The evaluation sets beside a checkout (../shared/data): where bare file names like "math500.jsonl" are found.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def resolve_data_path(name: str | Path, data_dir: str | Path = "") -> Path:
    """Where a dataset entry of a config lives: an absolute path as is; relative to `data_dir` when one is given;
    else relative to the working directory if that file exists; else a file in SHARED_DATA."""
    path = Path(name)
    if path.is_absolute():
        return path
    if data_dir:
        return Path(data_dir) / path
    return path if path.is_file() else SHARED_DATA / path


def dataset_name(path: str | Path) -> str:
    """A short name for reports: the file stem without a split suffix (math500, aime24, gsm8k)."""
    return re.sub(r"[_-](test|train|val|validation)$", "", Path(path).stem)
