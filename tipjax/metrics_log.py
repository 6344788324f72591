"""Per-step metrics to a JSONL file, TensorBoard event files, the console progress bar and optional sinks (W&B).

metrics.jsonl holds exactly one row per step, also across kills and resumes:
- `MetricsLog(workdir, resume_step=N)` (N = the step the run restored, 0 for a fresh start) drops the rows
  past N, which were written by steps the resumed run is about to redo, and tells TensorBoard to discard its
  events past N;
- a second write for the step this log wrote last (periodic eval after the training row) merges into that
  row; a write for an older step replaces it and drops the rows after it (an abandoned trajectory).
Rewrites go to a temporary file renamed over metrics.jsonl, so a kill never leaves half a file; a line torn
by a kill mid-append is dropped on the next start.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np
from tensorboardX import SummaryWriter

# What the progress bar shows; everything goes to the JSONL file and TensorBoard.
CONSOLE_KEYS = ("loss", "kept_fraction", "grad_norm", "response_length_mean", "tokens_per_s")

log = logging.getLogger(__name__)


class MetricsLog:
    def __init__(self, workdir: str | Path, *, enabled: bool = True, resume_step: int | None = None,
                 sinks: tuple = ()):
        self.enabled = enabled
        self.sinks = tuple(sinks)  # objects with log(step, row): every row written also goes to them
        self.path = Path(workdir) / "metrics.jsonl"
        self.tb = None
        self._lines: list[tuple[int, str]] = []  # (step, JSON text) of every row in the file, in order
        self._merge_step: int | None = None      # the step this log wrote last: later writes merge into it
        if not enabled:
            return
        lines, dirty = _read_lines(self.path)
        if resume_step is not None:
            kept = [(s, text) for s, text in lines if s <= resume_step]
            if len(kept) < len(lines):
                log.info("metrics.jsonl: dropped %d row(s) after the restored step %d", len(lines) - len(kept),
                         resume_step)
            dirty, lines = dirty or len(kept) < len(lines), kept
        self._lines = lines
        if dirty:
            self._rewrite()
        purge = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        row = {k: _scalar(v) for k, v in metrics.items()}
        if not self.enabled:
            return row
        last = self._lines[-1][0] if self._lines else None
        if last is not None and step == last and step == self._merge_step:
            merged = {**json.loads(self._lines[-1][1]), **row}
            self._lines[-1] = (step, json.dumps(merged))
            self._rewrite()
        elif last is not None and step <= last:
            self._lines = [(s, text) for s, text in self._lines if s < step] + [(step, _dumps(step, row))]
            self._rewrite()
        else:
            self._lines.append((step, _dumps(step, row)))
            with self.path.open("a") as f:
                f.write(self._lines[-1][1] + "\n")
        self._merge_step = step
        for key, value in row.items():
            if math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        for sink in self.sinks:
            sink.log(step, row)
        return row

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def _rewrite(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with tmp.open("w") as f:
            f.writelines(text + "\n" for _, text in self._lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _dumps(step: int, row: Mapping[str, float]) -> str:
    return json.dumps({"step": step, **row})


def _read_lines(path: Path) -> tuple[list[tuple[int, str]], bool]:
    """The file's rows as (step, text), and whether the file needs a rewrite (a torn or unreadable line)."""
    if not path.is_file():
        return [], False
    text = path.read_text()
    rows, dirty = [], bool(text) and not text.endswith("\n")
    for number, line in enumerate(text.splitlines(), 1):
        try:
            rows.append((int(json.loads(line)["step"]), line))
        except (ValueError, KeyError, TypeError):
            if line.strip():
                dirty = True
                log.warning("%s:%d: dropped an unreadable row (torn by a kill?)", path, number)
    return rows, dirty


def _scalar(value) -> float:
    return float(np.asarray(value))


def console_summary(row: Mapping[str, float]) -> dict[str, str]:
    return {k: f"{row[k]:.4g}" for k in CONSOLE_KEYS if k in row}


def read_metrics(workdir: str | Path) -> list[dict]:
    """The rows of metrics.jsonl; a last line torn by a kill mid-append is left out."""
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise
    return rows
