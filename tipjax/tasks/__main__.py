"""`python -m tipjax.tasks`: write a task's problem set (jsonl) and/or its tokenizer folder.

    python -m tipjax.tasks --task=arithmetic --n=500 --seed=0 --split=eval --out=arith_eval.jsonl --steps=3
    python -m tipjax.tasks --task=arithmetic --tokenizer_out=DIR
    python -m tipjax.tasks --list

Difficulty knobs are flags named after the task's ``Difficulty`` fields (arithmetic: --steps, --min_steps,
--digits, --operators, --negative). Errors follow tipjax.cli: one line ``error: <what> (<flag | path>)`` and
at most one hint, exit code 2 for usage (unknown task or knob, bad values) and 1 for the rest (an output
that exists or cannot be written); --debug shows the traceback instead. Everything is checked before
anything is generated or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Sequence

from tipjax import cli, tasks
from tipjax.tasks import files, tokenizer


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return lowered in ("true", "1", "yes")


def _parser(task: tasks.Task | None = None, add_help: bool = True) -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m tipjax.tasks", description=__doc__.split("\n\n")[0], add_help=add_help)
    p.add_argument("--task", help=f"one of: {', '.join(tasks.names())}")
    p.add_argument("--n", type=int, help="number of problems (with --out)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--split", choices=tasks.SPLITS, default="train", help="default train")
    p.add_argument("--out", help="the jsonl file to write")
    p.add_argument("--tokenizer_out", "--tokenizer-out", dest="tokenizer_out", help="the tokenizer folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that tipjax.tasks wrote before")
    p.add_argument("--list", action="store_true", help="print the task names and their difficulty knobs")
    if task is None:
        return p
    hints = typing.get_type_hints(task.Difficulty)
    for field in dataclasses.fields(task.Difficulty):
        kind = hints[field.name]
        extra: dict[str, Any] = {"nargs": "?", "const": True} if kind is bool else {}
        p.add_argument(*dict.fromkeys([f"--{field.name}", f"--{field.name.replace('_', '-')}"]), dest=field.name,
                       type=_boolean if kind is bool else kind, **extra,
                       help=f"{field.metadata.get('help', 'difficulty')} (default {field.default!r})")
    return p


def _describe() -> str:
    lines = []
    for name in tasks.names():
        task = tasks.get(name)
        knobs = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(task.Difficulty))
        lines.append(f"{name}: {knobs}; instruction {task.instruction!r}")
    return "\n".join(lines)


def run(argv: Sequence[str]) -> list[str]:
    """Does what the command line asks; returns the report lines. Raises cli.UsageError, TaskError or OSError."""
    first, _ = _parser(add_help=False).parse_known_args(argv)
    task = tasks.get(first.task) if first.task else None
    args, unknown = _parser(task).parse_known_args(argv)  # --help stops here, with the knobs of --task
    if unknown:
        known = "" if task is None else f"{task.name} knobs: " + ", ".join(
            f"--{f.name}" for f in dataclasses.fields(task.Difficulty))
        raise cli.UsageError(f"unknown argument {unknown[0]!r}", unknown[0].split("=", 1)[0], known or None)
    if args.list:
        return [_describe()]
    if task is None:
        raise cli.UsageError("no task", "--task", "python -m tipjax.tasks --list shows them")
    if not args.out and not args.tokenizer_out:
        raise cli.UsageError("nothing to write", "--out", "pass --out FILE.jsonl and/or --tokenizer_out DIR")
    if args.out and args.n is None:
        raise cli.UsageError("--out needs the number of problems", "--n")
    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(task.Difficulty)
             if getattr(args, f.name) is not None}
    if args.n is not None and args.n < 1:
        raise cli.UsageError(f"n must be >= 1, got {args.n}", "--n")
    task.difficulty(**knobs)
    if args.out:
        files.check_output(args.out, args.overwrite)
    if args.tokenizer_out:
        files.check_tokenizer_output(args.tokenizer_out, args.overwrite)
    report = []
    if args.out:
        examples = task.generate(args.n, args.seed, args.split, **knobs)
        path = files.write_examples(args.out, examples, task.name, args.split, overwrite=args.overwrite)
        report.append(f"wrote {len(examples)} {args.split} problems of {task.name} (seed {args.seed}) to {path}")
    if args.tokenizer_out:
        folder = task.save_tokenizer(args.tokenizer_out)
        report.append(f"wrote the {task.name} tokenizer ({tokenizer.VOCAB_SIZE} tokens) to {folder}")
    return report


def _command(argv: list[str]) -> None:
    try:
        lines = run(argv)
    except tasks.TaskError as err:
        # The API names a parameter (n, steps); the command line names its flag (--n, --steps).
        raise cli.UsageError(err.what, f"--{err.where}", err.hint) from err
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """The exit code: 0, 2 for usage errors, 1 for other user errors (printed as one line, tipjax.cli)."""
    return cli.run_main(_command, argv)


if __name__ == "__main__":
    sys.exit(main())
