"""W&B as an optional sink: with a stand-in wandb module, the same rows as metrics.jsonl, the config, eval tables,
offline mode, one run across resumes, never imported unless asked; with the real wandb (in the test extra, not a
dependency), an offline run writes its files with those rows."""

import dataclasses
import sys
import types

import pytest

from tipjax import config_loader, config_schema, train
from tipjax.metrics_log import read_metrics


class FakeTable:
    def __init__(self, columns, data):
        self.columns, self.data = columns, data


class FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.summary, self.finished = kwargs, [], {}, False

    def log(self, data, step=None):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init, module.Table = init, FakeTable
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def _tiny(*overrides):
    cfg = config_loader.to_dataclass(config_loader.load_config("configs/tiny.py:all", [
        "--config.rollout.max_new_tokens=8", "--config.timing_every=0", *overrides]), config_schema.TrainConfig)
    return dataclasses.replace(cfg, mesh=config_schema.MeshSpec(1, 1, 1))


def test_wandb_receives_the_metrics_rows_config_and_eval_tables(tmp_path, fake_wandb):
    cfg = _tiny("--config.total_steps=3", "--config.checkpoint.every=2", "--config.log.wandb_project=opd",
                "--config.log.wandb_mode=offline")
    train.validate(cfg)
    train.train(cfg, tmp_path, max_steps=2)
    train.train(cfg, tmp_path)  # resumed from step 2: the same W&B run continues
    first, second = fake_wandb.runs
    assert first.kwargs["project"] == "opd" and first.kwargs["mode"] == "offline"
    assert first.kwargs["dir"] == str(tmp_path) and first.kwargs["name"] == tmp_path.name
    assert first.kwargs["config"]["selection"]["rule"] == "all" and first.kwargs["config"]["total_steps"] == 3
    assert second.kwargs["id"] == first.kwargs["id"] and second.kwargs["resume"] == "allow"
    assert first.finished and second.finished
    rows = {r["step"]: r for r in read_metrics(tmp_path)}
    sent = {step: data for run in (first, second) for step, data in run.logged}
    assert sorted(sent) == [1, 2, 3] == sorted(rows)
    for step, data in sent.items():
        assert data == {k: v for k, v in rows[step].items() if k != "step"}, step

    from tipjax import wandb_log

    sink = wandb_log.WandbSink(cfg.log, tmp_path, config={})
    sink.log(5, {"loss": 1.0, "eval/math/mean_at_n": 0.5, "eval/math/mean_at_n_se": 0.1, "eval/math/pass_at_n": 0.7,
                 "eval/math/response_length": 9.0})
    step, logged = fake_wandb.runs[-1].logged[-1]
    assert step == 5 and logged["eval/table"].columns[:3] == ["step", "dataset", "mean_at_n"]
    assert logged["eval/table"].data == [[5, "math", 0.5, 0.1, 0.7, 9.0]]
    sink.eval_report({"math": {"before": 0.2, "before_se": 0.1, "after": 0.5, "after_se": 0.1, "change": 0.3}})
    assert fake_wandb.runs[-1].logged[-1][1]["eval/report"].data == [["math", 0.2, 0.1, 0.5, 0.1, 0.3]]
    assert fake_wandb.runs[-1].summary == {"eval/math/change": 0.3}


def test_wandb_is_not_imported_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    train.train(_tiny("--config.total_steps=1"), tmp_path)
    assert len(read_metrics(tmp_path)) == 1
    with pytest.raises(config_loader.ConfigError, match=r"log.wandb_project='opd': wandb is not installed"):
        train.validate(_tiny("--config.log.wandb_project=opd"))
    with pytest.raises(config_loader.ConfigError, match="log.wandb_mode"):
        train.validate(_tiny("--config.log.wandb_mode=cloud"))


def test_real_wandb_offline_run_writes_the_metrics_rows(tmp_path):
    """The real wandb (the test extra installs it), offline: WORKDIR/wandb holds the run's file, and it carries
    every step's loss and gradient norm exactly as metrics.jsonl has them (W&B stores each value as JSON text)."""
    import json

    import wandb  # noqa: F401  (the real package, not a stand-in)

    workdir = tmp_path / "run"
    train.train(_tiny("--config.total_steps=2", "--config.log.wandb_project=tipjax-test",
                      "--config.log.wandb_mode=offline"), str(workdir))
    [run_file] = list((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
    data = run_file.read_bytes()
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2] and b"tipjax-test" in data
    for row in rows:
        for key in ("loss", "grad_norm", "kept_fraction"):
            assert key.encode() in data and json.dumps(row[key]).encode() in data, (row["step"], key)
