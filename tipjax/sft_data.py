"""SFT pairs as fixed-shape token batches, with an iterator state a checkpoint can store.

A pair (prompt messages, response text) becomes one row: the chat-templated prompt, rendered exactly as
tipjax.data renders OPD and eval prompts, left padded to Tp = max_prompt_length, then the response and the
tokenizer's eos right padded to Tr = max_response_length. Every batch has the shape [B, Tp + Tr], so the
step compiles once. Pairs longer than either width are skipped and counted (never silently truncated: a
cut response would teach the model to stop mid-answer).

Batch: tokens [B, Tp + Tr] int32, seq_mask [B, Tp + Tr] int32 (1 = real token), loss_mask [B, Tr] int32
(1 = a response token or the eos: the positions the loss is taken over).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable

import jax
import numpy as np

from tipjax import data, tasks
from tipjax.config_schema import SFTDataSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class SFTSet:
    prompt_ids: np.ndarray     # [N, Tp] int32, left padded
    prompt_mask: np.ndarray    # [N, Tp] int32
    response_ids: np.ndarray   # [N, Tr] int32, response + eos, right padded
    response_mask: np.ndarray  # [N, Tr] int32
    n_pairs: int               # pairs read, skipped ones included
    n_skipped: int             # longer than max_prompt_length or max_response_length

    def __len__(self) -> int:
        return len(self.prompt_ids)


def prompt_options(spec: SFTDataSpec) -> data.PromptOptions:
    return data.PromptOptions(instruction=spec.instruction, enable_thinking=spec.enable_thinking)


def pairs(spec: SFTDataSpec) -> Iterable[tuple[list[dict[str, str]], str]]:
    """(prompt messages, response) pairs: n_examples train-split problems of data.task, or data.source's rows."""
    options = prompt_options(spec)
    if spec.task:
        return tasks.get(spec.task).sft_examples(spec.n_examples, spec.seed, "train", options, **spec.difficulty)
    rows = tasks.read_sft_examples(spec.source, options, spec.solution_field)
    return (pair for _, pair in zip(range(spec.n_examples), rows))


def tokenize(examples: Iterable[tuple[list[dict[str, str]], str]], tokenizer, spec: SFTDataSpec) -> SFTSet:
    """Renders, tokenises and pads every pair; see the module docstring."""
    if tokenizer.eos_token_id is None:
        raise data.PromptFileError(f"tokenizer {tokenizer.name_or_path!r} has no eos token to end responses with")
    options = prompt_options(spec)
    prompts, responses = [], []
    for messages, response in examples:
        prompts.append(data.render(tokenizer, messages, options))
        responses.append(response)
    if not prompts:
        raise data.PromptFileError(f"{spec.source or spec.task}: no SFT pairs")
    prompt_tokens = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_tokens = tokenizer(responses, add_special_tokens=False)["input_ids"]
    tp, tr, eos = spec.max_prompt_length, spec.max_response_length, int(tokenizer.eos_token_id)
    kept = [(p, r + [eos]) for p, r in zip(prompt_tokens, response_tokens) if len(p) <= tp and len(r) + 1 <= tr]
    skipped = len(prompts) - len(kept)
    if skipped:
        log.warning("SFT data: %d of %d pairs longer than data.max_prompt_length=%d or data.max_response_length=%d "
                    "(response + eos) were skipped", skipped, len(prompts), tp, tr)
    if not kept:
        raise data.PromptFileError(f"{spec.source or spec.task}: every pair is longer than data.max_prompt_length="
                                   f"{tp} or data.max_response_length={tr}")
    n, pad = len(kept), data.pad_token_id(tokenizer)
    out = SFTSet(np.full((n, tp), pad, np.int32), np.zeros((n, tp), np.int32), np.full((n, tr), pad, np.int32),
                 np.zeros((n, tr), np.int32), len(prompts), skipped)
    for row, (p, r) in enumerate(kept):
        out.prompt_ids[row, tp - len(p):], out.prompt_mask[row, tp - len(p):] = p, 1
        out.response_ids[row, :len(r)], out.response_mask[row, :len(r)] = r, 1
    return out


class SFTBatches:
    """Shuffled batches over epochs, a pure function of (seed, batch number): resuming needs only the number.

    Each epoch is a fresh permutation of the rows (the last partial batch of an epoch is dropped); each process
    takes its slice of the global batch.
    """

    def __init__(self, sft_set: SFTSet, batch_size: int, seed: int):
        from tipjax.config_loader import ConfigError

        if len(sft_set) < batch_size:
            raise ConfigError(f"batch_size={batch_size}: more than the {len(sft_set)} usable SFT pairs")
        if batch_size % jax.process_count():
            raise ConfigError(f"batch_size={batch_size} must divide over {jax.process_count()} processes")
        self.set, self.batch_size, self.seed = sft_set, batch_size, seed
        self.per_epoch = len(sft_set) // batch_size
        self.position = 0

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, k = divmod(self.position, self.per_epoch)
        self.position += 1
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.set))
        local = self.batch_size // jax.process_count()
        rows = order[k * self.batch_size:(k + 1) * self.batch_size][jax.process_index() * local:][:local]
        s = self.set
        return {"tokens": np.concatenate([s.prompt_ids[rows], s.response_ids[rows]], axis=1),
                "seq_mask": np.concatenate([s.prompt_mask[rows], s.response_mask[rows]], axis=1),
                "loss_mask": s.response_mask[rows]}

    def get_state(self) -> dict[str, Any]:
        return {"position": self.position}

    def set_state(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
