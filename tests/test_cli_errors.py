"""The CLI error policy: one `error:` line, at most one hint, exit 2 for usage/config, 1 for other user errors."""

import errno
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tipjax import cli
from tipjax.checkpoint import CheckpointError
from tipjax.config_loader import ConfigError
from tipjax.tokenization import IncompatibleModels
from tipjax.data import PromptFileError

ROOT = Path(__file__).resolve().parents[1]


def _raiser(err):
    def main(argv):
        raise err
    return main


def _run(main, argv=(), **kwargs):
    return cli.run_main(main, list(argv), **kwargs)


def error_line(stderr: str) -> str:
    """The `error:` line, checking it is followed by at most one `hint:` line and nothing else."""
    lines = stderr.strip().splitlines()
    if lines[-1].startswith("hint: "):
        lines.pop()
    assert lines[-1].startswith("error: "), stderr
    return lines[-1]


@pytest.mark.parametrize("err, code, line", [
    (ConfigError("unknown config key 'optim.lr'; known here: ['learning_rate']"), 2,
     "error: unknown config key 'optim.lr'; known here: ['learning_rate']"),
    (cli.UsageError("--step must be positive", "--step"), 2, "error: --step must be positive (--step)"),
    (PromptFileError("data/x.jsonl:7: malformed JSON line: Expecting value"), 1,
     "error: data/x.jsonl:7: malformed JSON line: Expecting value"),
    (IncompatibleModels("chat templates render differently:\nstudent: 'a'\nteacher: 'b'"), 1,
     "error: chat templates render differently: student: 'a' teacher: 'b'"),
    (CheckpointError("no checkpoint for step 7; available steps: 10, 20", "run/checkpoints"), 1,
     "error: no checkpoint for step 7; available steps: 10, 20 (run/checkpoints)"),
    (FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "prompts.jsonl"), 1,
     "error: No such file or directory (prompts.jsonl)"),
    (FileNotFoundError("eval.datasets not found: ['a.jsonl']"), 1, "error: eval.datasets not found: ['a.jsonl']"),
])
def test_user_errors_are_one_line_with_their_exit_code(err, code, line, capsys):
    assert _run(_raiser(err)) == code
    out = capsys.readouterr()
    assert error_line(out.err) == line
    assert "Traceback" not in out.err


def test_hint_is_the_only_second_line(capsys):
    assert _run(_raiser(cli.UserError("--out is not empty", "/tmp/x", hint="choose a new\nor empty folder"))) == 1
    assert capsys.readouterr().err.splitlines() == ["error: --out is not empty (/tmp/x)",
                                                    "hint: choose a new or empty folder"]


def test_bugs_keep_their_traceback():
    with pytest.raises(KeyError):
        _run(_raiser(KeyError("params")))
    with pytest.raises(ValueError):  # plain ValueError is not in the table: a bug until classified
        _run(_raiser(ValueError("shapes do not match")))


def test_entrypoint_may_classify_more_errors(capsys):
    assert _run(_raiser(ValueError("selection.ratio must be in (0, 1]")), usage_errors=(ValueError,)) == 2
    assert error_line(capsys.readouterr().err) == "error: selection.ratio must be in (0, 1]"


def test_debug_flag_and_env_reraise(monkeypatch):
    seen = []

    def main(argv):
        seen.append(argv)
        raise ConfigError("unknown config key 'x'")

    with pytest.raises(ConfigError):
        _run(main, ["--config=c.py", "--debug"])
    assert seen[-1] == ["--config=c.py"]  # --debug is the wrapper's, never the entrypoint's
    monkeypatch.setenv("TIPJAX_DEBUG", "1")
    with pytest.raises(ConfigError):
        _run(main)
    monkeypatch.setenv("TIPJAX_DEBUG", "0")
    assert _run(main) == 2


def test_success_is_exit_zero():
    assert _run(lambda argv: {"report": 1}) == 0


def _parser_main(argv):
    parser = cli.ArgumentParser(prog="python -m tipjax.thing")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"))
    parser.parse_args(argv)


@pytest.mark.parametrize("argv, line", [
    ([], "error: the following arguments are required (--workdir)"),
    (["--workdir=w", "--step=x"], "error: invalid int value: 'x' (--step)"),
    (["--workdir=w", "--dtype=fp8"], "error: invalid choice: 'fp8' (choose from 'float32', 'bfloat16') (--dtype)"),
    (["--workdir=w", "--bogus", "1"], "error: unrecognized arguments (--bogus 1)"),
])
def test_argparse_errors_follow_the_one_line_form(argv, line, capsys):
    assert _run(_parser_main, argv) == 2
    err = capsys.readouterr().err
    assert error_line(err) == line
    assert err.splitlines()[-1] == "hint: python -m tipjax.thing --help" and "usage:" not in err


def _export(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("TIPJAX_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tipjax.export", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_export_cli_usage_error_exits_2():
    result = _export("--workdir", "somewhere")
    assert result.returncode == 2
    assert error_line(result.stderr) == "error: the following arguments are required (--out)"
    assert "Traceback" not in result.stderr


def test_export_cli_not_a_workdir_exits_1_and_debug_shows_traceback(tmp_path):
    result = _export("--workdir", str(tmp_path), "--out", str(tmp_path.parent / "hf"))
    assert result.returncode == 1
    assert error_line(result.stderr) == (f"error: not a tipjax workdir (no student_config.json and checkpoints/) "
                                         f"({tmp_path})")
    assert "Traceback" not in result.stderr
    debug = _export("--workdir", str(tmp_path), "--out", str(tmp_path.parent / "hf"), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ExportError" in debug.stderr
    assert not (tmp_path.parent / "hf").exists()


@pytest.mark.parametrize("module, name, code", cli.USER_ERRORS)
def test_every_user_error_in_the_table_exists(module, name, code):
    # The table names classes by string so it costs no imports; a rename must not leave a dead row behind.
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, BaseException) and code in (1, 2)
