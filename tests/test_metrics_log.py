"""metrics.jsonl keeps exactly one row per step through kills, resumes and repeated writes."""

import json
import os

import pytest

from tipjax.metrics_log import MetricsLog, read_metrics


def _log(workdir, steps, *, offset=0.0, **kwargs):
    logbook = MetricsLog(workdir, **kwargs)
    for step in steps:
        logbook.write(step, {"loss": step + offset, "kept_fraction": 0.5})
    logbook.close()


def _steps(workdir):
    return [row["step"] for row in read_metrics(workdir)]


def test_resume_drops_rows_past_the_restored_step(tmp_path):
    _log(tmp_path, range(1, 8))  # killed after step 7, last checkpoint at step 4
    _log(tmp_path, range(5, 9), offset=100.0, resume_step=4)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] for r in rows] == [1, 2, 3, 4, 105, 106, 107, 108]


def test_resume_rewrites_atomically(tmp_path):
    _log(tmp_path, range(1, 6))
    path = tmp_path / "metrics.jsonl"
    before = path.read_bytes()
    os.link(path, tmp_path / "old.jsonl")  # a second name for the old file's inode
    MetricsLog(tmp_path, resume_step=2).close()
    assert _steps(tmp_path) == [1, 2]
    # The old file was replaced by a rename, never truncated in place (a kill mid-rewrite loses nothing).
    assert (tmp_path / "old.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["metrics.jsonl", "old.jsonl"]


def test_second_write_for_a_step_merges_into_its_row(tmp_path):
    logbook = MetricsLog(tmp_path, resume_step=0)
    logbook.write(1, {"loss": 1.0})
    logbook.write(2, {"loss": 2.0})
    logbook.write(2, {"eval/math/mean_at_n": 0.25})  # periodic eval after the training row
    logbook.write(3, {"loss": 3.0})
    logbook.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1] == {"step": 2, "loss": 2.0, "eval/math/mean_at_n": 0.25}


def test_rewriting_an_old_step_supersedes_it_and_what_followed(tmp_path):
    _log(tmp_path, range(1, 6))
    _log(tmp_path, [3, 4], offset=10.0)  # a resume that did not pass resume_step
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [1, 2, 13, 14]


def test_a_row_torn_by_a_kill_is_dropped(tmp_path):
    _log(tmp_path, range(1, 4))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 0.7')  # the process died mid-line
    assert _steps(tmp_path) == [1, 2, 3]
    _log(tmp_path, [4], resume_step=3)
    assert _steps(tmp_path) == [1, 2, 3, 4]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 4


def test_fresh_start_and_disabled_log(tmp_path):
    _log(tmp_path, range(1, 4))
    _log(tmp_path, range(1, 3), enabled=False, resume_step=0)  # a non-primary host never touches the file
    assert _steps(tmp_path) == [1, 2, 3]
    _log(tmp_path, [1], offset=50.0, resume_step=0)  # step 0: nothing of the old trajectory survives
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 51.0, "kept_fraction": 0.5}]


def test_a_bad_row_in_the_middle_is_not_hidden(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError):
        read_metrics(tmp_path)
