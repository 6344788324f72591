"""Built-in verifiable tasks: problem generators with gold chain-of-thought solutions ending in ``\\boxed{}``,
a fixed train/eval split, and a small Hugging Face tokenizer, so a tiny model can learn and be distilled
on a laptop CPU.

    task = tasks.get("arithmetic")
    train = task.generate(5000, seed=0, split="train", steps=2, digits=2)    # [Example(problem, answer, solution)]
    for messages, response in task.sft_examples(5000, seed=0, steps=2):       # SFT warm start pairs
        ...
    task.save_tokenizer("runs/tiny/student")                                  # tokenizer.json + tokenizer_config.json
    prompts = data.load_prompts(path, tokenizer, task.prompt_options())       # the task's instruction

    python -m tipjax.tasks --task=arithmetic --n=500 --seed=0 --split=eval --out=arith_eval.jsonl
    python -m tipjax.tasks --task=arithmetic --tokenizer_out=DIR
"""

from __future__ import annotations

from tipjax.tasks.arithmetic import Arithmetic
from tipjax.tasks.files import read_sft_examples, write_examples
from tipjax.tasks.task import SPLITS, Example, Task, TaskError

__all__ = ["Arithmetic", "Example", "SPLITS", "TASKS", "Task", "TaskError", "get", "names", "read_sft_examples",
           "write_examples"]

TASKS: dict[str, type[Task]] = {"arithmetic": Arithmetic}


def names() -> list[str]:
    return sorted(TASKS)


def get(name: str) -> Task:
    """The task called ``name``; an unknown name raises TaskError listing the known ones."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}", "task", f"known: {', '.join(names())}")
    return TASKS[name]()
