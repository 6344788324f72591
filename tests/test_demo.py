"""The demo pipeline end to end at a reduced size: build teacher and student by SFT (cached), evaluate, OPD,
evaluate again, report before/after accuracy."""

import dataclasses
import json

import pytest

from tipjax import config_loader, config_schema, demo, train


def _cfg():
    return config_loader.to_dataclass(config_loader.load_config("configs/demo.py:tiny"), config_schema.TrainConfig)


@pytest.mark.slow
def test_demo_builds_once_trains_and_reports_before_after(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TIPJAX_CACHE", str(tmp_path / "cache"))
    cfg = _cfg()
    base = demo.folder("tiny")
    assert str(base).startswith(str(tmp_path / "cache" / "demo"))
    train.validate(cfg)  # before preparation the folders it builds need not exist
    train.train(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert "building the teacher" in out and "building the student" in out and "demo teacher" in out
    for name in ("teacher", "student"):
        folder = demo.paths("tiny")[name]
        assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    report = json.loads((tmp_path / "run" / "eval_report.json").read_text())
    (entry,) = report.values()
    assert entry["before_step"] == 0 and entry["after_step"] == cfg.total_steps
    for key in ("before", "after", "before_se", "after_se"):
        assert 0.0 <= entry[key] <= 1.0
    assert "-> " in out and "points" in out

    # A second run reuses the cached models; a changed recipe gets its own folder.
    before = {p: p.stat().st_mtime_ns for p in demo.paths("tiny")["teacher"].iterdir()}
    train.train(dataclasses.replace(cfg, total_steps=3), tmp_path / "run")
    assert "building" not in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in demo.paths("tiny")["teacher"].iterdir()}
    monkeypatch.setitem(demo.SIZES["tiny"], "n_eval", 9)
    assert demo.folder("tiny") != base


def test_demo_never_touches_a_folder_it_did_not_make(tmp_path, monkeypatch):
    monkeypatch.setenv("TIPJAX_CACHE", str(tmp_path))
    foreign = demo.folder("tiny")
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a tipjax demo folder"):
        demo.build("tiny")
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]
