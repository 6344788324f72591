"""What every built-in task shares: examples, the fixed train/eval split, deterministic generation, SFT pairs.

A task draws random problems from ``random.Random`` seeded by (task, seed, split), so a set is a pure
function of its arguments on any machine and Python version. Which split a problem belongs to is not
random: it is a hash of the problem's canonical form (``Task.canonical``), so a problem is in exactly one
split whatever the seed or difficulty, and train and eval sets never overlap. Generation keeps drawing
until it has ``n`` distinct problems of the requested split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import typing
from pathlib import Path
from typing import Any, Iterator, Literal

from tipjax import data
from tipjax.tasks import tokenizer

Split = Literal["train", "eval"]
SPLITS: tuple[str, ...] = ("train", "eval")

# Draws in a row that yield no new problem before generation gives up (the knobs allow too few problems).
MAX_MISSES = 20_000


class TaskError(ValueError):
    """A task name, difficulty knob, count or split is wrong. ``where`` names the parameter; the message is
    ``what (where)``, the form tipjax.cli prints."""

    def __init__(self, what: str, where: str, hint: str | None = None):
        super().__init__(f"{what} ({where})")
        self.what, self.where, self.hint = what, where, hint


@dataclasses.dataclass(frozen=True)
class Example:
    problem: str
    answer: str  # the final answer, as graded by tipjax.grading.grade
    solution: str  # the gold chain-of-thought response, ending in \boxed{answer}

    def to_row(self) -> dict[str, str]:
        return dataclasses.asdict(self)


class Task:
    """A procedurally generated, verifiable task. Subclasses set the class attributes and implement ``draw``."""

    name: str = ""
    instruction: str = data.INSTRUCTION  # appended to every problem, as PromptOptions.instruction
    eval_fraction: float = 0.1  # share of the problem space held out for evaluation; fixed per task
    Difficulty: type = object  # a frozen dataclass of knobs with defaults; ``check`` validates it

    def draw(self, rng: random.Random, difficulty: Any) -> Example:
        """One random problem of the given difficulty."""
        raise NotImplementedError

    def canonical(self, problem: str) -> str:
        """The form of a problem text that decides its split: whitespace dropped, lowercase."""
        return "".join(problem.split()).lower()

    # --- difficulty knobs ------------------------------------------------------------------------------

    def difficulty(self, **knobs: Any) -> Any:
        """The validated knobs: defaults overridden by ``knobs``; unknown or ill-typed knobs raise TaskError."""
        fields = {f.name: f for f in dataclasses.fields(self.Difficulty)}
        hints = typing.get_type_hints(self.Difficulty)
        for key, value in knobs.items():
            if key not in fields:
                raise TaskError(f"unknown difficulty knob {key!r} for task {self.name}", key,
                                f"known: {', '.join(fields)}")
            expected = hints[key]
            ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            if not ok:
                raise TaskError(f"difficulty knob {key} must be {expected.__name__}, got {value!r}", key)
        result = self.Difficulty(**knobs)
        self.check(result)
        return result

    def check(self, difficulty: Any) -> None:
        """Raises TaskError naming the first knob out of range."""

    # --- splits and generation ---------------------------------------------------------------------------

    def split_of(self, problem: str) -> str:
        """"eval" for the held-out share of problems (by hash of the canonical form), else "train"."""
        return self._split_of_canonical(self.canonical(problem))

    def _split_of_canonical(self, canonical: str) -> str:
        digest = hashlib.sha256(f"{self.name}:{canonical}".encode()).digest()
        return "eval" if int.from_bytes(digest[:8], "big") < self.eval_fraction * 2**64 else "train"

    def generate(self, n: int, seed: int = 0, split: Split = "train", **difficulty: Any) -> list[Example]:
        """``n`` distinct problems of ``split``, a pure function of the arguments."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TaskError(f"n must be an integer >= 1, got {n!r}", "n")
        if split not in SPLITS:
            raise TaskError(f"split must be one of {', '.join(SPLITS)}, got {split!r}", "split")
        knobs = self.difficulty(**difficulty)
        rng = random.Random(f"tipjax.tasks/{self.name}/{seed}/{split}")
        seen: set[str] = set()
        examples: list[Example] = []
        misses = 0
        while len(examples) < n:
            example = self.draw(rng, knobs)
            canonical = self.canonical(example.problem)
            if canonical in seen or self._split_of_canonical(canonical) != split:
                misses += 1
                if misses > MAX_MISSES:
                    raise TaskError(f"task {self.name}: found only {len(examples)} distinct {split} problems of "
                                    f"{n} with {knobs}", "n", "raise the difficulty or lower n")
                continue
            misses = 0
            seen.add(canonical)
            examples.append(example)
        return examples

    # --- prompts, SFT pairs and the tokenizer ------------------------------------------------------------

    def prompt_options(self, **overrides: Any) -> data.PromptOptions:
        """PromptOptions with this task's instruction: pass them to data.load_prompts, the trainer and eval."""
        return data.PromptOptions(**{"instruction": self.instruction, **overrides})

    def sft_examples(self, n: int, seed: int = 0, split: Split = "train", options: data.PromptOptions | None = None,
                     **difficulty: Any) -> Iterator[tuple[list[dict[str, str]], str]]:
        """(prompt messages, gold response) pairs for teacher-forced warm starts, rendered as data.load_prompts
        renders prompts (default: ``prompt_options()``), so SFT and distillation prompts are identical. The
        arguments are checked here, not at the first ``next``."""
        options = self.prompt_options() if options is None else options
        examples = self.generate(n, seed, split, **difficulty)
        return ((data.prompt_messages({"problem": e.problem}, options), e.solution) for e in examples)

    def tokenizer(self):
        """The task's Hugging Face tokenizer (a PreTrainedTokenizerFast with a ChatML template)."""
        return tokenizer.build(self.name)

    def save_tokenizer(self, folder: str | Path) -> Path:
        """Writes the tokenizer folder (AutoTokenizer.from_pretrained loads it); returns the folder."""
        return tokenizer.save(self.tokenizer(), folder)
