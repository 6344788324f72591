"""The bad-input catalogue (issue 11): one row per bad input a new user gives a CLI or the public API.

Every CLI row runs the entrypoint's main(argv) in-process under tipjax.cli's policy (two rows also run the real
`python -m` command) and checks the exit code (2 usage/config, 1 other user errors, 0 where tipjax survives
the input), that the one `error:` line (plus at most one `hint:`) names the offending key, flag, file[:line] or
tensor, that no traceback is printed, and that nothing outside the row's own workdir changed: the shared
inputs, the row's other files, the repository and ../shared/data are snapshotted before and after.
API rows check the exception class and that its message names the argument.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from fixtures_tokenizer import save_tiny_qwen3
from fixtures_workdir import write_tiny_workdir
from tipjax import cli, models
from tipjax.config_loader import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
SFT = str(ROOT / "configs" / "sft_arithmetic.py") + ":tiny"
GOOD_ROW = '{"problem": "What is 1+1?", "answer": "2", "solution": "\\\\boxed{2}"}\n'


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def a(tmp_path_factory) -> dict:
    """Shared, read-only inputs: a tiny HF folder and broken copies, prompt files, a tipjax workdir."""
    root = tmp_path_factory.mktemp("assets")
    hf = save_tiny_qwen3(root / "hf")
    out = {"root": root, "hf": hf}
    for name in ("bigtok", "badeos", "trunc", "missing", "badjson"):
        out[name] = Path(shutil.copytree(hf, root / f"hf_{name}"))
    _edit_json(out["bigtok"] / "config.json", vocab_size=256)  # the tokenizer has ~1027 tokens
    _edit_json(out["badeos"] / "generation_config.json", eos_token_id=[5000])
    weights = out["trunc"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(out["missing"] / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(out["missing"] / "model.safetensors"), metadata={"format": "pt"})
    (out["badjson"] / "config.json").write_text("{\"vocab_size\": 12,,}")

    files = root / "files"
    (files / "a").mkdir(parents=True)
    (files / "b").mkdir()
    for name, text in (("good.jsonl", GOOD_ROW * 4), ("a/math500.jsonl", GOOD_ROW), ("b/math500_test.jsonl", GOOD_ROW),
                       ("malformed.jsonl", GOOD_ROW + "{not json\n"),
                       ("noanswer.jsonl", '{"problem": "What is 1+1?"}\n')):
        (files / name).write_text(text)
    (files / "latin1.jsonl").write_bytes(GOOD_ROW.encode() + b'{"problem": "caf\xe9", "answer": "1"}\n')
    out["files"] = files

    run = root / "run"  # a workdir as the trainer lays it out: steps 1 and 2 of a tiny student
    cfg = write_tiny_workdir(run)
    out["run"] = run
    out["tiny_model"] = models.init(cfg, jax.random.PRNGKey(0))
    return out


# --- snapshots: what "nothing outside the workdir changed" compares ----------------------------------------

_SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", "tipjax.egg-info"}


def _snapshot(root: Path, exclude: Path | None = None, content: bool = True) -> dict:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP and Path(dirpath, d) != exclude]
        found[dirpath] = None
        for name in filenames:
            p = Path(dirpath, name)
            if content:
                found[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
            else:
                st = p.stat()
                found[str(p)] = (st.st_size, st.st_mtime_ns)
    return found


def _world(a: dict, case_dir: Path, workdir: Path) -> dict:
    return {"assets": _snapshot(a["root"]), "case": _snapshot(case_dir, exclude=workdir),
            "repo": _snapshot(ROOT, content=False), "shared": _snapshot(ROOT.parent / "shared" / "data", content=False)}


# --- the catalogue ------------------------------------------------------------------------------------------
# (id, entrypoint, argv(a, w, o) -> list, exit code, substrings of the error line). a: the shared inputs, w: the
# row's workdir (the cwd), o: a folder beside it that must stay untouched.

def _train(*extra):
    return lambda a, w, o: [f"--config={TINY}", f"--workdir={w / 'run'}", *extra]


def _eval(*extra, model="hf"):
    return lambda a, w, o: ["--model", str(a[model]), "--data", str(a["files"] / "good.jsonl"), "--n", "1",
                            "--max-new-tokens", "2", *[x(a, w, o) if callable(x) else x for x in extra]]


def _sft(*extra):
    return lambda a, w, o: [f"--config={SFT}", f"--workdir={w / 'run'}", *extra]


def _f(name):
    return lambda a, w, o: str(a["files"] / name)


def _prepare_identity(a, w, o):
    from tipjax import train

    identity = train.run_identity(train.load_train_config(TINY, []))
    identity["selection.rule"] = "soft_or"
    (w / "run").mkdir()
    (w / "run" / "run.json").write_text(json.dumps({"identity": identity}))
    return _train("--config.mesh.data=4")(a, w, o)


def _prepare_checkpoints(a, w, o):
    (w / "run" / "checkpoints" / "1").mkdir(parents=True)
    (w / "run" / "checkpoints" / "1" / "x").write_text("")
    return _train("--config.resume=False", "--config.mesh.data=4")(a, w, o)


def _foreign_folder(a, w, o):
    (o / "mine").mkdir()
    (o / "mine" / "notes.txt").write_text("precious")
    return ["--workdir", str(a["run"]), "--out", str(o / "mine")]


def _foreign_file(a, w, o):
    (o / "problems.jsonl").write_text("precious\n")
    return ["--task=arithmetic", "--n=3", f"--out={o / 'problems.jsonl'}"]


def _empty_step(a, w, o):
    shutil.copytree(a["run"], w / "run")
    (w / "run" / "checkpoints" / "3").mkdir()
    return ["--workdir", str(w / "run"), "--out", str(w / "hf")]


def _out_under_file(a, w, o):
    (o / "report.txt").write_text("a file, not a folder")
    return str(o / "report.txt" / "report.json")


CASES = [
    # python -m tipjax.train: every key validated before anything loads
    ("train-negative-lr", "train", _train("--config.optim.learning_rate=-0.001"), 2, ["optim.learning_rate"]),
    ("train-eos-outside-vocab", "train", _train("--config.rollout.eos_token_id=(300,)", "--config.mesh.data=4"), 2,
     ["rollout.eos_token_id", "[0, 256)"]),
    ("train-overlong-bogus", "train", _train("--config.data.overlong=bogus"), 2, ["data.overlong", "bogus"]),
    ("train-negative-total-steps", "train", _train("--config.total_steps=-5"), 2, ["total_steps"]),
    ("train-negative-max-steps", "train", _train("--max_steps=-1"), 2, ["--max_steps"]),
    ("train-nan-temperature", "train", _train("--config.rollout.temperature=nan"), 2, ["rollout.temperature"]),
    ("train-top-p-zero", "train", _train("--config.rollout.top_p=0.0"), 2, ["rollout.top_p"]),
    ("train-max-new-tokens-zero", "train", _train("--config.rollout.max_new_tokens=0"), 2, ["rollout.max_new_tokens"]),
    ("train-samples-per-prompt-zero", "train", _train("--config.rollout.samples_per_prompt=0"), 2,
     ["rollout.samples_per_prompt"]),
    ("train-prompts-per-step-zero", "train", _train("--config.prompts_per_step=0"), 2, ["prompts_per_step"]),
    ("train-kv-cache-dtype-int8", "train", _train("--config.rollout.kv_cache_dtype=int8"), 2,
     ["rollout.kv_cache_dtype", "float8_e4m3fn"]),
    ("train-pallas-decode-odd-head-dim", "train",
     _train("--config.student.decode_attention=pallas", "--config.student.arch.head_dim=24"), 2,
     ["student.decode_attention", "head_dim"]),
    ("train-keep-zero", "train", _train("--config.checkpoint.keep=0"), 2, ["checkpoint.keep"]),
    ("train-ratio-above-one", "train", _train("--config.selection.ratio=1.5"), 2, ["selection.ratio"]),
    ("train-unknown-rule", "train", _train("--config.selection.rule=bogus"), 2, ["selection.rule"]),
    ("train-unknown-key", "train", _train("--config.optim.lr=0.1"), 2, ["optim.lr"]),
    ("train-ill-typed-value", "train", _train("--config.total_steps=abc"), 2, ["total_steps"]),
    ("train-micro-batches-not-dividing", "train", _train("--config.micro_batches=3"), 2, ["micro_batches"]),
    ("train-b2-one", "train", _train("--config.optim.b2=1.0"), 2, ["optim.b2"]),
    ("train-mesh-fsdp-zero", "train", _train("--config.mesh.fsdp=0"), 2, ["mesh.fsdp"]),
    ("train-at-start-without-datasets", "train", _train("--config.eval.at_start=True"), 2, ["eval.at_start"]),
    ("train-missing-eval-set", "train", _train("--config.eval.every=5", "--config.eval.datasets=('nope.jsonl',)"),
     1, ["eval.datasets", "nope.jsonl"]),
    ("train-missing-prompt-file", "train", _train("--config.data.source=nope.jsonl"), 1, ["data.source", "nope.jsonl"]),
    ("train-non-utf8-prompt-file", "train",
     lambda a, w, o: _train(f"--config.data.source={a['files'] / 'latin1.jsonl'}",
                            f"--config.data.tokenizer={a['hf']}")(a, w, o), 1, ["latin1.jsonl:2", "UTF-8"]),
    ("train-malformed-prompt-file", "train",
     lambda a, w, o: _train(f"--config.data.source={a['files'] / 'malformed.jsonl'}",
                            f"--config.data.tokenizer={a['hf']}")(a, w, o), 1, ["malformed.jsonl:2"]),
    ("train-tokenizer-larger-than-vocab", "train",
     lambda a, w, o: _train(f"--config.data.tokenizer={a['hf']}", "--config.mesh.data=4")(a, w, o), 1,
     ["tokenizer", "256"]),
    ("train-missing-student-folder", "train",
     _train("--config.student.arch=None", "--config.student.path=/nonexistent/model"), 1, ["student.path"]),
    ("train-no-config", "train", lambda a, w, o: [f"--workdir={w}"], 2, ["--config"]),
    ("train-no-workdir", "train", lambda a, w, o: [f"--config={TINY}"], 2, ["--workdir"]),
    ("train-workdir-of-another-config", "train", _prepare_identity, 2, ["selection.rule", "soft_or"]),
    ("train-resume-false-with-checkpoints", "train", _prepare_checkpoints, 2, ["resume=False"]),
    ("train-missing-resume-step", "train", _train("--resume_step=7", "--config.mesh.data=4"), 1, ["step 7"]),
    ("train-batch-not-splitting-over-devices", "train", _train(), 2, ["prompts_per_step=4", "8 mesh devices"]),
    # python -m tipjax.eval: flags, paths, data and the model checked before any sampling
    ("eval-n-zero", "eval", _eval("--n", "0"), 2, ["--n"]),
    ("eval-nan-temperature", "eval", _eval("--temperature", "nan"), 2, ["--temperature", "nan"]),
    ("eval-top-p-above-one", "eval", _eval("--top-p", "1.5"), 2, ["--top-p"]),
    ("eval-max-new-tokens-zero", "eval", _eval("--max-new-tokens", "0"), 2, ["--max-new-tokens"]),
    ("eval-dtype-int8", "eval", _eval("--dtype", "int8"), 2, ["--dtype", "int8"]),
    ("eval-out-under-a-file", "eval", _eval("--out", _out_under_file), 1, ["--out", "report.txt"]),
    ("eval-out-is-a-folder", "eval", _eval("--out", lambda a, w, o: str(o)), 1, ["--out"]),
    ("eval-colliding-dataset-names", "eval",
     lambda a, w, o: ["--model", str(a["hf"]), "--data", str(a["files"] / "a" / "math500.jsonl"),
                      str(a["files"] / "b" / "math500_test.jsonl")], 2, ["--data", "'math500'"]),
    ("eval-non-utf8-data", "eval", _eval("--data", _f("latin1.jsonl")), 1, ["latin1.jsonl:2", "UTF-8"]),
    ("eval-malformed-data", "eval", _eval("--data", _f("malformed.jsonl")), 1, ["malformed.jsonl:2"]),
    ("eval-row-without-answer", "eval", _eval("--data", _f("noanswer.jsonl")), 1, ["noanswer.jsonl:1", "answer"]),
    ("eval-missing-data", "eval", _eval("--data", _f("nope.jsonl")), 1, ["nope.jsonl"]),
    ("eval-no-data", "eval", lambda a, w, o: ["--model", str(a["hf"])], 2, ["--data"]),
    ("eval-missing-model", "eval", lambda a, w, o: ["--model", str(w / "nope"), "--data", str(a["files"] / "good.jsonl")], 2, ["--model", "nope"]),
    ("eval-override-without-config", "eval", _eval("--config.n=2"), 2, ["--config"]),
    ("eval-tokenizer-larger-than-vocab", "eval", _eval(model="bigtok"), 1, ["tokenizer", "256", "hf_bigtok"]),
    ("eval-eos-outside-vocab", "eval", _eval(model="badeos"), 1, ["5000", "hf_badeos"]),
    ("eval-truncated-safetensors", "eval", _eval(model="trunc"), 1, ["model.safetensors", "hf_trunc"]),
    ("eval-missing-tensor", "eval", _eval(model="missing"), 1, ["model.norm.weight"]),
    ("eval-config-not-json", "eval", _eval(model="badjson"), 1, ["config.json", "hf_badjson"]),
    # python -m tipjax.export: never over what tipjax did not create
    ("export-foreign-non-empty-out", "export", _foreign_folder, 1, ["not a tipjax export", "mine"]),
    ("export-out-is-the-workdir", "export", lambda a, w, o: ["--workdir", str(a["run"]), "--out", str(a["run"])], 1,
     ["workdir"]),
    ("export-out-inside-the-workdir", "export",
     lambda a, w, o: ["--workdir", str(a["run"]), "--out", str(a["run"] / "hf")], 1, ["inside the run's workdir"]),
    ("export-missing-step", "export",
     lambda a, w, o: ["--workdir", str(a["run"]), "--out", str(w / "hf"), "--step", "7"], 1, ["step 7", "1, 2"]),
    ("export-not-a-workdir", "export", lambda a, w, o: ["--workdir", str(o), "--out", str(w / "hf")], 1,
     ["not a tipjax workdir"]),
    ("export-dtype-int8", "export",
     lambda a, w, o: ["--workdir", str(a["run"]), "--out", str(w / "hf"), "--dtype", "int8"], 2, ["--dtype"]),
    ("export-no-out", "export", lambda a, w, o: ["--workdir", str(a["run"])], 2, ["--out"]),
    ("export-empty-step-folder", "export", _empty_step, 0, ["checkpoint step 2"]),
    # python -m tipjax.sft
    ("sft-no-config", "sft", lambda a, w, o: [f"--workdir={w}"], 2, ["--config"]),
    ("sft-negative-lr", "sft", _sft("--config.optim.learning_rate=-1.0"), 2, ["optim.learning_rate"]),
    ("sft-task-and-source", "sft", lambda a, w, o: _sft(f"--config.data.source={a['files'] / 'good.jsonl'}")(a, w, o),
     2, ["data.task", "data.source"]),
    ("sft-response-length-one", "sft", _sft("--config.data.max_response_length=1"), 2, ["data.max_response_length"]),
    ("sft-batch-size-zero", "sft", _sft("--config.batch_size=0"), 2, ["batch_size"]),
    ("sft-non-utf8-data", "sft",
     lambda a, w, o: _sft("--config.data.task=", f"--config.data.source={a['files'] / 'latin1.jsonl'}",
                          f"--config.tokenizer={a['hf']}")(a, w, o), 1, ["latin1.jsonl:2", "UTF-8"]),
    # python -m tipjax.tasks
    ("tasks-unknown-task", "tasks", lambda a, w, o: ["--task=bogus", "--n=3", f"--out={w / 'p.jsonl'}"], 2, ["bogus"]),
    ("tasks-n-zero", "tasks", lambda a, w, o: ["--task=arithmetic", "--n=0", f"--out={w / 'p.jsonl'}"], 2, ["--n"]),
    ("tasks-bad-knob", "tasks", lambda a, w, o: ["--task=arithmetic", "--n=3", "--steps=-1", f"--out={w / 'p.jsonl'}"],
     2, ["--steps"]),
    ("tasks-foreign-out-file", "tasks", _foreign_file, 1, ["problems.jsonl"]),
]


def _entry(name):
    if name == "train":
        from tipjax import train

        return lambda argv: cli.run_main(train.main, argv)
    if name == "eval":
        from tipjax import eval as tev

        return lambda argv: cli.run_main(tev.main, argv)
    if name == "export":
        from tipjax import export

        return lambda argv: cli.run_main(export.main, argv)
    if name == "sft":
        from tipjax import sft

        return sft.main
    from tipjax.tasks import __main__ as tasks_main

    return tasks_main.main


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    if lines and lines[-1].startswith("hint: "):
        lines.pop()
    assert lines and lines[-1].startswith("error: "), stderr
    return lines[-1]


@pytest.mark.parametrize("name, entry, argv, code, names", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input(name, entry, argv, code, names, a, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TIPJAX_DEBUG", raising=False)
    w, o = tmp_path / "work", tmp_path / "other"
    w.mkdir()
    o.mkdir()
    monkeypatch.chdir(w)  # a relative path the entrypoint writes lands in the row's own workdir
    args = argv(a, w, o)
    if entry == "eval":  # no evaluation row may get as far as sampling
        from tipjax import eval as tev

        def no_sampling(*args, **kwargs):
            raise AssertionError("sampling started")

        monkeypatch.setattr(tev, "evaluate", functools.partial(tev.evaluate, generate=no_sampling))
    before = _world(a, tmp_path, w)
    assert _entry(entry)(args) == code
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    if code:
        line = error_line(out.err)
        for word in names:
            assert word in line, line
    else:
        for word in names:
            assert word in out.out + out.err
    assert _world(a, tmp_path, w) == before


# --- the real commands: `python -m` wires run_main (one-line error, exit code, no traceback) ------------------

def _python_m(module, *args, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("TIPJAX_DEBUG", None)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_python_m_train_names_the_key(a, tmp_path):
    before = _world(a, tmp_path, tmp_path / "run")
    result = _python_m("tipjax.train", f"--config={TINY}", "--config.rollout.temperature=nan",
                       f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_line(result.stderr) == "error: rollout.temperature=nan must be a finite number >= 0 (0 is greedy)"
    assert _world(a, tmp_path, tmp_path / "run") == before and not (tmp_path / "run").exists()


def test_python_m_eval_checks_out_before_loading(a, tmp_path):
    (tmp_path / "report.txt").write_text("x")
    result = _python_m("tipjax.eval", "--model", a["hf"], "--data", a["files"] / "good.jsonl", "--n", 1,
                       "--max-new-tokens", 2,
                       "--out", tmp_path / "report.txt" / "r.json", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--out cannot be created" in error_line(result.stderr)
    assert "eval good" not in result.stderr  # no progress bar: sampling never started


# --- the public API: errors name the argument, file or tensor ---------------------------------------------------

def _generate(a, ids, **kwargs):
    from tipjax import sampling

    ids = jnp.asarray(ids)
    return sampling.generate(a["tiny_model"], ids, jnp.ones(ids.shape, jnp.int32), max_new_tokens=2,
                             rng=jax.random.key(0), **{"eos_token_id": 2, **kwargs})


def _load_config_missing(a):
    from tipjax import config_loader

    return config_loader.load_config(str(a["root"] / "nope.py"))


def _override(a, item):
    from tipjax import config_loader

    return config_loader.load_config(TINY, [item])


API = [
    ("load_hf-int8", lambda a: models.load_hf(str(a["hf"]), dtype="int8"), ValueError, ["dtype=int8"]),
    ("load_hf-not-a-dtype", lambda a: models.load_hf(str(a["hf"]), dtype="fp7"), ValueError, ["fp7"]),
    ("load_hf-truncated", lambda a: models.load_hf(str(a["trunc"])), ValueError, ["hf_trunc/model.safetensors"]),
    ("load_hf-missing-tensor", lambda a: models.load_hf(str(a["missing"])), ValueError, ["model.norm.weight"]),
    ("load_hf-config-not-json", lambda a: models.load_hf(str(a["badjson"])), ValueError, ["config.json"]),
    ("generate-id-too-large", lambda a: _generate(a, [[5, 64]]), ValueError, ["prompt_ids", "64 at (0, 1)"]),
    ("generate-negative-id", lambda a: _generate(a, [[-1, 5]]), ValueError, ["prompt_ids", "-1 at (0, 0)"]),
    ("generate-float-ids", lambda a: _generate(a, [[1.5, 2.0]]), ValueError, ["prompt_ids", "integer", "float"]),
    ("generate-nan-temperature", lambda a: _generate(a, [[5, 6]], temperature=float("nan")), ValueError,
     ["temperature"]),
    ("generate-eos-outside-vocab", lambda a: _generate(a, [[5, 6]], eos_token_id=99), ValueError, ["eos_token_id"]),
    ("selection-unknown-rule", lambda a: __import__("tipjax.selection").selection.rules.check_rule("bogus"),
     ValueError, ["rule='bogus'"]),
    ("selection-ratio-zero", lambda a: __import__("tipjax.selection").selection.rules.check_ratio(0.0), ValueError,
     ["ratio=0.0"]),
    ("selection-unknown-option", lambda a: __import__("tipjax.selection").selection.SelectionOptions(bogus=1),
     TypeError, ["bogus"]),
    ("config-file-missing", _load_config_missing, ConfigError, ["nope.py"]),
    ("config-unknown-key", lambda a: _override(a, "optim.lr=1"), ConfigError, ["optim.lr"]),
    ("config-ill-typed", lambda a: _override(a, "prompts_per_step=many"), ConfigError, ["prompts_per_step"]),
]


@pytest.mark.parametrize("call, error, names", [c[1:] for c in API], ids=[c[0] for c in API])
def test_api_bad_input(call, error, names, a, tmp_path):
    before = _world(a, tmp_path, tmp_path / "work")
    with pytest.raises(error) as raised:
        call(a)
    message = str(raised.value)
    assert "\n" not in message.strip()
    for word in names:
        assert word in message, message
    assert _world(a, tmp_path, tmp_path / "work") == before
