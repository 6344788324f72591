"""Per-step metrics to a JSONL file, TensorBoard event files and the console progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
from tensorboardX import SummaryWriter

# What the progress bar shows; everything goes to the JSONL file and TensorBoard.
CONSOLE_KEYS = ("loss", "kept_fraction", "grad_norm", "response_length_mean", "tokens_per_s")


class MetricsLog:
    def __init__(self, workdir: str | Path, *, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.tb = SummaryWriter(str(Path(workdir) / "tensorboard")) if enabled else None

    def write(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        row = {k: _scalar(v) for k, v in metrics.items()}
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")
            for key, value in row.items():
                if math.isfinite(value):
                    self.tb.add_scalar(key, value, step)
        return row

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _scalar(value) -> float:
    return float(np.asarray(value))


def console_summary(row: Mapping[str, float]) -> dict[str, str]:
    return {k: f"{row[k]:.4g}" for k in CONSOLE_KEYS if k in row}


def read_metrics(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
