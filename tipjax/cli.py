"""One error policy for the `python -m tipjax.*` entrypoints (train, eval, export).

A user's mistake (a flag, a config key, a path, a prompt line, a checkpoint) prints exactly

    error: <what> (<where>)
    hint: <at most one>

on stderr and exits 2 for usage/config errors and 1 for the rest, without a traceback. `--debug` on the
command line or TIPJAX_DEBUG=1 re-raises it with its traceback. Anything not in USER_ERRORS is a bug and
keeps its traceback. Ctrl-C prints `error: interrupted (Ctrl-C)` and exits 130 at once (a trainer's finished
checkpoints are kept; rerunning resumes from the newest).

    if __name__ == "__main__":
        sys.exit(cli.run_main(main))
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable, Sequence

__all__ = ["USER_ERRORS", "ArgumentParser", "UsageError", "UserError", "classify", "format_error", "run_main"]


class UserError(ValueError):
    """Bad input the user can fix; `where` names the key, file:line, path or tensor, `hint` the way out."""

    exit_code = 1

    def __init__(self, what: str, where: Any = None, hint: str | None = None):
        super().__init__(what if where is None else f"{what} ({where})")
        self.what, self.where, self.hint = what, where, hint


class UsageError(UserError):
    """A command-line flag or its value is wrong."""

    exit_code = 2


# The one classification table: (module, class name, exit code), first match wins. Classes are looked up only
# in modules already imported (an exception cannot come from a module never loaded), so the table costs no
# imports and no import cycles.
USER_ERRORS: tuple[tuple[str, str, int], ...] = (
    ("tipjax.cli", "UsageError", 2),
    ("tipjax.config_loader", "ConfigError", 2),
    ("tipjax.loop", "WorkdirMismatch", 2),
    ("tipjax.tasks.task", "TaskError", 2),
    ("argparse", "ArgumentError", 2),
    ("tipjax.cli", "UserError", 1),
    ("tipjax.data", "PromptFileError", 1),
    ("tipjax.tokenization", "IncompatibleModels", 1),
    ("tipjax.loop", "NonFiniteTraining", 1),
    ("builtins", "FileNotFoundError", 1),
    ("builtins", "FileExistsError", 1),
    ("builtins", "NotADirectoryError", 1),
    ("builtins", "IsADirectoryError", 1),
    ("builtins", "PermissionError", 1),
)


def classify(err: BaseException, usage_errors: Sequence[type] = (), user_errors: Sequence[type] = ()) -> int | None:
    """The exit code for a user error, or None for a bug (which keeps its traceback)."""
    if isinstance(err, tuple(usage_errors)):
        return 2
    if isinstance(err, tuple(user_errors)):
        return 1
    for module, name, code in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(err, cls):
            return code
    return None


def format_error(err: BaseException) -> list[str]:
    """`error: <what> (<where>)` and at most one `hint: ...` line."""
    what, where, hint = getattr(err, "what", None), getattr(err, "where", None), getattr(err, "hint", None)
    if what is None and isinstance(err, OSError) and err.filename is not None and err.strerror:
        what, where = err.strerror, err.filename  # e.g. open("x") -> No such file or directory (x)
    elif what is None and isinstance(err, argparse.ArgumentError):
        what, where = err.message, err.argument_name
    elif what is None:
        what = str(err) or type(err).__name__
    lines = [f"error: {_one_line(what)}" + ("" if where is None else f" ({_one_line(str(where))})")]
    if hint:
        lines.append(f"hint: {_one_line(hint)}")
    return lines


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors (one line, exit 2) instead of usage text and SystemExit."""

    def error(self, message: str):
        # argparse's forms: "argument --x: <why>", "<what>: <flags>" (required/unrecognized), or free text.
        match = re.fullmatch(r"argument (\S+): (.*)", message, flags=re.S)
        if match:
            what, where = match.group(2), match.group(1)
        elif re.fullmatch(r"(the following arguments are required|unrecognized arguments): .*", message, flags=re.S):
            what, _, where = message.partition(": ")
        else:
            what, where = message, None
        raise UsageError(what, where, hint=f"{self.prog} --help")


def _debug(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("TIPJAX_DEBUG", "") not in ("", "0")


def run_main(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *,
             usage_errors: Sequence[type] = (), user_errors: Sequence[type] = ()) -> int:
    """Runs main(argv without --debug) under the error policy; returns the exit code for sys.exit.

    usage_errors / user_errors: extra exception classes this entrypoint treats as exit-2 / exit-1 user errors.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    try:
        main([a for a in argv if a != "--debug"])
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stdout.flush()
        print("error: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        # Exit at once: work the interrupt cut short (an asynchronous checkpoint save's thread, a half-built
        # event loop) can hang interpreter shutdown or print noise after the line above. Finished checkpoints
        # and metrics rows are already on disk (rows are appended and closed one by one); an unfinished save
        # is a temporary folder that the next run ignores.
        os._exit(130)
    except Exception as err:
        code = classify(err, usage_errors, user_errors)
        if debug or code is None:
            raise
        sys.stdout.flush()
        print("\n".join(format_error(err)), file=sys.stderr, flush=True)
        return code
    return 0
