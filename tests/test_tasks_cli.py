"""`python -m tipjax.tasks`: the files it writes, what it refuses to overwrite, and its one-line errors."""

import json
import os
import subprocess
import sys

from transformers import AutoTokenizer

from fixtures_tokenizer import repo_root
from tipjax import data, tasks
from tipjax.tasks.__main__ import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, code, *argv):
    """The error line, after checking the policy: exit code, one error line, at most one hint, no traceback."""
    got, out, err = _run(capsys, *argv)
    assert got == code, err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), err
    assert len(lines) == 1 or lines[1].startswith("hint: "), err
    return lines[0]


def test_writes_a_set_that_load_prompts_reads(capsys, tmp_path):
    out = tmp_path / "sets" / "arith_eval.jsonl"
    code, stdout, _ = _run(capsys, "--task=arithmetic", "--n=30", "--seed=7", "--split=eval", f"--out={out}",
                           "--steps=3", "--operators=+-*", f"--tokenizer_out={tmp_path / 'tok'}")
    assert code == 0 and "wrote 30 eval problems" in stdout and "104 tokens" in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    examples = tasks.get("arithmetic").generate(30, seed=7, split="eval", steps=3, operators="+-*")
    assert [{k: r[k] for k in ("problem", "answer", "solution")} for r in rows] == [e.to_row() for e in examples]
    assert {(r["task"], r["split"], r["generator"]) for r in rows} == {("arithmetic", "eval", "tipjax.tasks")}
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    prompts = data.load_prompts(out, tok, data.PromptOptions())
    assert prompts.n_rows == 30 and [p.answer for p in prompts.prompts] == [r["answer"] for r in rows]
    assert all(tok.unk_token_id not in p.token_ids.tolist() for p in prompts.prompts)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_overwrites_only_its_own_files_and_only_when_asked(capsys, tmp_path):
    out = tmp_path / "train.jsonl"
    args = ["--task=arithmetic", "--n=5", f"--out={out}"]
    assert _run(capsys, *args)[0] == 0
    first = out.read_text()
    err = _error(capsys, 1, *args, "--seed=1")
    assert err == f"error: output exists ({out})"
    assert out.read_text() == first
    assert _run(capsys, *args, "--seed=1", "--overwrite")[0] == 0 and out.read_text() != first
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text('{"problem": "1+1", "answer": "2"}\n')
    err = _error(capsys, 1, "--task=arithmetic", "--n=5", f"--out={foreign}", "--overwrite")
    assert err.endswith(f"not written by tipjax.tasks; not replacing it ({foreign})")
    assert foreign.read_text() == '{"problem": "1+1", "answer": "2"}\n'
    # A tokenizer folder: the same rules for its files; other files in the folder do not matter.
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert _run(capsys, "--task=arithmetic", f"--tokenizer_out={folder}")[0] == 0
    assert _error(capsys, 1, "--task=arithmetic", f"--tokenizer_out={folder}").endswith(
        f"({folder / 'tokenizer.json'})")
    assert _run(capsys, "--task=arithmetic", f"--tokenizer_out={folder}", "--overwrite")[0] == 0
    (folder / "tokenizer_config.json").write_text("{}")
    assert "not written by tipjax.tasks" in _error(capsys, 1, "--task=arithmetic", f"--tokenizer_out={folder}",
                                                   "--overwrite")


def test_errors_are_one_line_naming_the_flag_or_path(capsys, tmp_path):
    out = f"--out={tmp_path / 'x.jsonl'}"
    usage = {
        ("--task=nope", "--n=5", out): "error: unknown task 'nope' (--task)",
        ("--n=5", out): "(--task)",
        ("--task=arithmetic", "--n=0", out): "n must be >= 1, got 0 (--n)",
        ("--task=arithmetic", out): "(--n)",
        ("--task=arithmetic", "--n=5"): "nothing to write",
        ("--task=arithmetic", "--n=x", out): "invalid int value: 'x' (--n)",
        ("--task=arithmetic", "--n=5", "--split=test", out): "(--split)",
        ("--task=arithmetic", "--n=5", "--stepz=3", out): "unknown argument '--stepz=3' (--stepz)",
        ("--task=arithmetic", "--n=5", "--steps=0", out): "steps must be >= 1, got 0 (--steps)",
        ("--task=arithmetic", "--n=5", "--operators=/", out): "(--operators)",
        ("--task=arithmetic", "--n=5", "--negative=maybe", out): "(--negative)",
        ("--task=arithmetic", "--n=300", "--digits=1", "--steps=1", "--split=eval", out): "found only",
    }
    for argv, expected in usage.items():
        assert expected in _error(capsys, 2, *argv), argv
    assert not (tmp_path / "x.jsonl").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = _error(capsys, 1, "--task=arithmetic", "--n=5", f"--out={blocker / 'x.jsonl'}")
    assert err.endswith(f"({blocker / 'x.jsonl'})")
    assert _error(capsys, 1, "--task=arithmetic", "--n=5", f"--out={tmp_path}").endswith(f"({tmp_path})")
    assert _error(capsys, 1, "--task=arithmetic", f"--tokenizer_out={blocker}").endswith(f"({blocker})")


def test_list(capsys):
    code, out, _ = _run(capsys, "--list")
    assert code == 0 and out.startswith("arithmetic: steps=2, min_steps=0, digits=2")


def test_module_entry_point(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}

    def run(*argv):
        return subprocess.run([sys.executable, "-m", "tipjax.tasks", *argv], cwd=repo_root(), env=env,
                              capture_output=True, text=True, timeout=120)

    done = run("--task=arithmetic", "--n=3", f"--out={tmp_path / 'a.jsonl'}", "--negative")
    assert done.returncode == 0 and len((tmp_path / "a.jsonl").read_text().splitlines()) == 3
    failed = run("--task=arithmetic", "--n=3", f"--out={tmp_path / 'a.jsonl'}")
    assert failed.returncode == 1
    assert failed.stderr == f"error: output exists ({tmp_path / 'a.jsonl'})\nhint: pass --overwrite to replace it\n"
