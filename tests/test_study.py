"""scripts/study_tip.py: its smoke mode (tiny demo models, 2 rules x 1 seed) runs end to end and writes a table
with real numbers, the plots and study.json to the folder it is given (never docs/)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import study_tip  # noqa: E402


def _docs_state():
    return {p.name: p.stat().st_mtime_ns for p in (ROOT / "docs").glob("study*")}


@pytest.mark.slow
def test_smoke_study_writes_a_table_of_real_numbers(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    docs_before = _docs_state()
    env = {**os.environ, "TIPJAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_tip.py"), "--smoke", f"--out={out}",
                           f"--workdir={work}"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "study.json").read_text())
    table = data["table"]
    assert list(table) == ["all", "soft_or50"] and data["settings"]["smoke"]
    for variant, row in table.items():
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and row["n_seeds"] == 1
        assert 0 < row["tokens_with_gradient"] <= row["response_tokens"]
        for key in ("wall_s", "step_seconds_median", "step_temporaries_mib", "kept_fraction"):
            assert math.isfinite(row[key]) and row[key] > 0, (variant, key, row[key])
    assert table["all"]["kept_fraction"] == 1.0
    assert 0.3 < table["soft_or50"]["kept_fraction"] < 0.7
    assert 0.0 <= data["before"]["accuracy"] <= 1.0
    assert [len(r["eval_curve"]) for r in data["runs"]] == [1, 1]

    md = (out / "study.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| all ") or line.startswith("| soft_or50 ")]
    assert len(rows) == 2 and not any("nan" in r for r in rows)
    assert "<!-- notes -->" in md and "study/accuracy_vs_kept.png" in md
    for name in ("accuracy_vs_kept", "accuracy_vs_step", "training_loss", "quadrants"):
        assert (out / "study" / f"{name}.png").stat().st_size > 1000
    assert _docs_state() == docs_before  # the smoke run wrote only to its own folder

    # A rewrite from study.json keeps the hand-written discussion.
    (out / "study.md").write_text(md.replace("(to be written from the finished run)", "KEEP THIS"))
    assert study_tip.main(["--smoke", f"--out={out}", "--render_only"]) == 0
    assert "KEEP THIS" in (out / "study.md").read_text()


def test_claim_verdicts_follow_the_stated_rules():
    def row(accs, gain=0.1):
        return {"accuracy": accs, "vs_all_paired_se": None, "gain": gain, "step_temporaries_mib": 1.0}

    table = {"all": row([0.50, 0.52, 0.54]), "soft_or50": row([0.60, 0.62, 0.64]),
             "soft_or_bottom50": row([0.30, 0.31, 0.33]), "entropy50": row([0.49, 0.53, 0.53]),
             "q3_10": row([0.40, 0.42, 0.44], gain=0.05)}
    for name in ("soft_or50", "soft_or_bottom50", "entropy50", "q3_10"):
        d = [a - b for a, b in zip(table[name]["accuracy"], table["all"]["accuracy"])]
        table[name]["vs_all_paired_mean"], table[name]["vs_all_paired_se"] = study_tip.mean_se(d)
    text = "\n".join(study_tip.claims(table))
    assert "soft_or50 - all = +10.0 ± 0.0 points -> **reproduced**" in text
    assert "soft_or_bottom50 - soft_or50 = -30.7 ± 0.3 points -> **reproduced**" in text
    assert "entropy50 - all = -0.3" in text
    assert "q3_10 recovers 50% of the all-token gain" in text and "**not reproduced**" in text
