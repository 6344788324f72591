"""tipjax.plot on a synthetic metrics.jsonl: the PNGs it writes, and the one-line error without matplotlib."""

import json
import sys

import numpy as np
import pytest

from tipjax import plot


def _workdir(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for step in range(0, 21):
        row = {"step": step}
        if step:
            shares = rng.dirichlet(np.ones(4))
            row.update(loss=2.0 / step, rkl_all=1.5 / step, kept_fraction=0.5,
                       **{f"q{k + 1}": float(v) for k, v in enumerate(shares)})
        if step % 10 == 0:
            row.update({"eval/eval/mean_at_n": 0.3 + step / 50, "eval/eval/mean_at_n_se": 0.02})
        rows.append(row)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_plots_training_curves_and_quadrants(tmp_path):
    pytest.importorskip("matplotlib")
    workdir = _workdir(tmp_path)
    assert plot.main(["--workdir", str(workdir)]) == 0
    for name in ("training.png", "quadrants.png"):
        data = (workdir / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    rows = [{"step": 1, "quadrant_q3": 0.2, "eval/x_q3/mean_at_n": 0.5}]
    assert plot._quadrant_key(rows, "q3") == "quadrant_q3" and plot._quadrant_key(rows, "q1") is None


def test_missing_matplotlib_or_metrics_is_one_line(tmp_path, monkeypatch, capsys):
    assert plot.main(["--workdir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: no metrics.jsonl")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    assert plot.main(["--workdir", str(_workdir(tmp_path))]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: matplotlib is not installed (tipjax.plot)", "hint: pip install 'tipjax[plot]'"]
