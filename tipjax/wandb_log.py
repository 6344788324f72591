"""Weights & Biases as an optional metric sink (`pip install -e ".[wandb]"`, `--config.log.wandb_project=NAME`).

Only tipjax.train imports this module, and only when log.wandb_project is set, so wandb is never imported
otherwise. The sink receives exactly the rows written to metrics.jsonl (MetricsLog.sinks), the run's config,
and the periodic evaluations as a table. Offline mode (log.wandb_mode=offline) writes under WORKDIR/wandb for a
later `wandb sync`. A resumed run continues the same W&B run (its id is kept in WORKDIR/wandb_run_id).
"""

from __future__ import annotations

import uuid
from pathlib import Path

EVAL_COLUMNS = ("step", "dataset", "mean_at_n", "mean_at_n_se", "pass_at_n", "response_length")
REPORT_COLUMNS = ("dataset", "before", "before_se", "after", "after_se", "change")


class WandbSink:
    def __init__(self, spec, workdir: str | Path, *, config: dict):
        import wandb

        self.wandb = wandb
        workdir = Path(workdir)
        id_file = workdir / "wandb_run_id"
        if not id_file.is_file():
            tmp = workdir / ".wandb_run_id.tmp"
            tmp.write_text(uuid.uuid4().hex[:12])
            tmp.replace(id_file)
        self.run = wandb.init(project=spec.wandb_project, entity=spec.wandb_entity or None,
                              name=spec.wandb_name or workdir.name, mode=spec.wandb_mode, dir=str(workdir),
                              config=config, id=id_file.read_text().strip(), resume="allow")
        self.eval_rows: list[list] = []

    def log(self, step: int, row: dict) -> None:
        self.run.log(dict(row), step=step)
        names = sorted({k.split("/")[1] for k in row if k.startswith("eval/") and k.endswith("/mean_at_n")})
        if names:
            self.eval_rows += [[step, n, *(row.get(f"eval/{n}/{c}") for c in EVAL_COLUMNS[2:])] for n in names]
            table = self.wandb.Table(columns=list(EVAL_COLUMNS), data=[list(r) for r in self.eval_rows])
            self.run.log({"eval/table": table}, step=step)

    def eval_report(self, report: dict) -> None:
        """eval_report.json (before/after accuracy per eval set) as a table and in the run summary."""
        data = [[name, *(r.get(c) for c in REPORT_COLUMNS[1:])] for name, r in sorted(report.items())]
        self.run.log({"eval/report": self.wandb.Table(columns=list(REPORT_COLUMNS), data=data)})
        for name, r in report.items():
            self.run.summary[f"eval/{name}/change"] = r["change"]

    def close(self) -> None:
        self.run.finish()
