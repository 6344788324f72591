"""Where a training step's prompts come from: a prompt file (the grain pipeline) or synthetic ids (CPU demos).

Both give fixed-shape [P, Tp] left-padded batches (Tp = data.max_prompt_length, one bucket, so the step compiles
once) and a JSON-serialisable iterator state that the checkpoint stores, so a resumed run sees exactly the
prompts an uninterrupted one would.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from tipjax import data, teacher_context
from tipjax.config_schema import DataSpec


# What the step reads from a batch; the teacher's keys only when data.teacher_* asks for teacher-only context.
STEP_KEYS = ("prompt_ids", "prompt_mask", "teacher_prompt_ids", "teacher_prompt_mask")


class SyntheticPrompts:
    """Random prompt ids, a pure function of (seed, batch number): resuming needs only the batch number."""

    def __init__(self, spec: DataSpec, batch_size: int, vocab_size: int, avoid_ids: tuple[int, ...] = ()):
        if not 1 <= spec.synthetic_min_len <= spec.synthetic_max_len <= spec.max_prompt_length:
            raise ValueError("need 1 <= data.synthetic_min_len <= data.synthetic_max_len <= data.max_prompt_length")
        self.spec, self.batch_size, self.vocab_size = spec, batch_size, vocab_size
        self.allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(avoid_ids, np.int64))
        self.position = 0

    def __next__(self) -> dict[str, np.ndarray]:
        # Every host draws the whole global batch (batch_size rows per process) and keeps its own slice, so
        # a run's prompts do not depend on how many processes share it.
        rng = np.random.default_rng([self.spec.seed, 0, self.position])
        self.position += 1
        width, rows = self.spec.max_prompt_length, self.batch_size * jax.process_count()
        lengths = rng.integers(self.spec.synthetic_min_len, self.spec.synthetic_max_len + 1, rows)
        ids = np.zeros((rows, width), np.int32)
        mask = (np.arange(width)[None, :] >= width - lengths[:, None]).astype(np.int32)
        ids[mask > 0] = rng.choice(self.allowed, int(mask.sum()))
        mine = slice(jax.process_index() * self.batch_size, (jax.process_index() + 1) * self.batch_size)
        return {"prompt_ids": ids[mine], "prompt_mask": mask[mine]}

    def get_state(self) -> dict[str, Any]:
        return {"position": self.position}

    def set_state(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def prompt_options(spec: DataSpec) -> data.PromptOptions:
    """How the run's prompt files become token ids: the data.* keys mapped onto data.PromptOptions."""
    fields = (spec.prompt_field,) if spec.prompt_field else data.PromptOptions.prompt_fields
    return data.PromptOptions(prompt_fields=fields, answer_field=spec.answer_field, instruction=spec.instruction,
                              enable_thinking=spec.enable_thinking, max_prompt_length=spec.max_prompt_length,
                              overlong=spec.overlong)


class FilePrompts:
    """Prompts from a .jsonl/.parquet file through tipjax.data, repeating over epochs, this process's shard."""

    def __init__(self, spec: DataSpec, batch_size: int, tokenizer):
        context = teacher_context.from_spec(spec)
        self.prompt_set = data.load_prompts(spec.source, tokenizer, prompt_options(spec), teacher=context)
        # One bucket each (the student's and the teacher's own width), so the step compiles once.
        loader = data.LoaderOptions(batch_size=batch_size, seed=spec.seed, num_epochs=None,
                                    buckets=(spec.max_prompt_length,),
                                    teacher_buckets=context and (context.max_prompt_length,))
        self.iterator = data.make_iterator(self.prompt_set, data.pad_token_id(tokenizer), loader)

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.iterator)
        return {k: batch[k] for k in STEP_KEYS if k in batch}

    def get_state(self) -> dict[str, Any]:
        state = self.iterator.get_state()
        return json.loads(json.dumps(state, default=_jsonable))

    def set_state(self, state: dict[str, Any]) -> None:
        self.iterator.set_state(state)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"iterator state value {value!r} is not JSON serialisable")


def make_prompt_source(spec: DataSpec, batch_size: int, *, tokenizer=None, vocab_size: int,
                       avoid_ids: tuple[int, ...] = ()):
    if spec.source == "synthetic":
        return SyntheticPrompts(spec, batch_size, vocab_size, avoid_ids)
    if tokenizer is None:
        raise ValueError(f"data.source={spec.source!r} needs a tokenizer: set data.tokenizer or use a student "
                         f"loaded from a Hugging Face folder that has one")
    return FilePrompts(spec, batch_size, tokenizer)
