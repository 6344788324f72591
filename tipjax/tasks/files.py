"""Task sets and tokenizers on disk: written atomically, never over a file that tipjax.tasks did not write.

A written jsonl row is the format of ``../shared/data/*.jsonl`` (``problem``, ``answer``, plus the gold
``solution``) with ``task``, ``split`` and ``generator`` fields; ``generator`` is what marks the file as
replaceable with ``overwrite=True``. Anything else at the target is left alone.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from tipjax import data
from tipjax.tasks import tokenizer
from tipjax.tasks.task import Example

GENERATOR = "tipjax.tasks"


class OutputExists(FileExistsError):
    """The output path is taken; ``what (where)`` with an optional hint, the form tipjax.cli prints."""

    def __init__(self, what: str, where: Path, hint: str | None = None):
        super().__init__(f"{what} ({where})")
        self.what, self.where, self.hint = what, where, hint


def _written_by_tipjax(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        row = json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(row, dict) and row.get("generator") == GENERATOR


def _refuse(path: Path, ours: bool, overwrite: bool) -> None:
    if not ours:
        raise OutputExists("output exists and was not written by tipjax.tasks; not replacing it", path,
                           "choose another path or move the file away")
    if not overwrite:
        raise OutputExists("output exists", path, "pass --overwrite to replace it")


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """Raises OSError (naming the path) unless a task set may be written at path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "output is a directory", str(path))
    if path.exists():
        _refuse(path, _written_by_tipjax(path), overwrite)
    return path


def check_tokenizer_output(folder: str | Path, overwrite: bool = False) -> Path:
    """Raises OSError (naming the path) unless the tokenizer files may be written into folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "tokenizer output is not a directory", str(folder))
    present = [folder / name for name in tokenizer.FILES if (folder / name).exists()]
    if present:
        _refuse(present[0], tokenizer.written_by_tipjax(folder), overwrite)
    return folder


def write_examples(path: str | Path, examples: Iterable[Example], task: str, split: str,
                   overwrite: bool = False) -> Path:
    """Writes examples as jsonl (atomically: a reader never sees half a file); returns the path."""
    path = check_output(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:  # name the output, not the staging file
        raise OSError(err.errno, err.strerror, str(path)) from err
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for example in examples:
                row = {**example.to_row(), "task": task, "split": split, "generator": GENERATOR}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(staging, path)
    except BaseException:
        os.unlink(staging)
        raise
    return path


def read_sft_examples(path: str | Path, options: data.PromptOptions = data.PromptOptions(),
                      solution_field: str = "solution") -> Iterator[tuple[list[dict[str, str]], str]]:
    """(prompt messages, gold response) pairs from any prompt file with a solution field (a task set, or
    MATH-500), rendered as data.load_prompts renders the prompts; a row without either names file:line."""
    for number, row in data.read_rows(path):
        messages = data.prompt_messages(row, options)
        solution = row.get(solution_field)
        if messages is None:
            raise data.PromptFileError(f"{path}:{number}: no prompt; expected one of {list(options.prompt_fields)}")
        if not isinstance(solution, str) or not solution.strip():
            raise data.PromptFileError(f"{path}:{number}: no {solution_field!r} text")
        yield messages, solution
