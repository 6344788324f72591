"""`python -m tipjax.plot --workdir=DIR [--out=FOLDER]`: PNG curves of a run's metrics.jsonl.

Writes into FOLDER (default DIR/plots):
  training.png   loss, full-token reverse KL on fresh rollouts (rkl_all), kept-token fraction and held-out
                 accuracy (every eval/<set>/mean_at_n, with its standard error as a band), one panel each,
                 over the steps where the run logged them (an SFT run has loss and token accuracy)
  quadrants.png  shares of the four TIP quadrants among response tokens (q1..q4: entropy x divergence,
                 PAPER.md section 3) over training, when the run logged them

matplotlib is an optional extra (`pip install tipjax[plot]`); without it the command prints one error line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tipjax import cli

PANELS = (("loss", "loss"), ("rkl_all", "reverse KL, all response tokens"), ("kept_fraction", "kept-token fraction"),
          ("token_accuracy", "SFT token accuracy"))
QUADRANTS = (("q1", "Q1 high entropy, high divergence"), ("q2", "Q2 high entropy, low divergence"),
             ("q3", "Q3 low entropy, high divergence"), ("q4", "Q4 low entropy, low divergence"))


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise cli.UserError("matplotlib is not installed", "tipjax.plot", "pip install 'tipjax[plot]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [s for s, _ in points], [v for _, v in points]


def _quadrant_key(rows: list[dict], name: str) -> str | None:
    """The logged column of a quadrant's share: `q1` itself or a name with it as a part (`quadrant_q1`, `q1_share`)."""
    pattern = re.compile(rf"(^|[/_]){name}($|[/_])")
    keys = sorted({k for r in rows for k in r if pattern.search(k) and not k.startswith("eval/")}, key=len)
    return keys[0] if keys else None


def plot(workdir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Writes the PNGs for a workdir's metrics.jsonl; returns their paths."""
    from tipjax.metrics_log import read_metrics

    workdir = Path(workdir)
    if not (workdir / "metrics.jsonl").is_file():
        raise cli.UserError("no metrics.jsonl", workdir, "pass the --workdir of a training run")
    rows = read_metrics(workdir)
    if not rows:
        raise cli.UserError("metrics.jsonl has no rows", workdir / "metrics.jsonl")
    out = Path(out) if out else workdir / "plots"
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    written = []

    accuracy = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("/mean_at_n")})
    panels = [(k, title) for k, title in PANELS if any(k in r for r in rows)] + [(k, k) for k in accuracy]
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
        for ax, (key, title) in zip(axes[:, 0], panels):
            steps, values = _series(rows, key)
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None)
            se_steps, se = _series(rows, key + "_se")
            if se_steps == steps:  # accuracy: +- one standard error over problems
                ax.fill_between(steps, [v - e for v, e in zip(values, se)], [v + e for v, e in zip(values, se)],
                                alpha=0.25)
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.suptitle(str(workdir), fontsize=9)
        fig.tight_layout()
        written.append(out / "training.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    quadrants = [(k, label) for (name, label) in QUADRANTS if (k := _quadrant_key(rows, name))]
    if quadrants:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for key, label in quadrants:
            ax.plot(*_series(rows, key), label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("share of response tokens")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"TIP quadrants: {workdir}", fontsize=9)
        fig.tight_layout()
        written.append(out / "quadrants.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if not written:
        raise cli.UserError("metrics.jsonl has none of the plotted metrics", workdir / "metrics.jsonl")
    return written


def _command(argv: list[str]) -> None:
    parser = cli.ArgumentParser(prog="python -m tipjax.plot", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training or SFT run's workdir")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default WORKDIR/plots)")
    args = parser.parse_args(argv)
    for path in plot(args.workdir, args.out):
        print(f"wrote {path}")


def main(argv=None) -> int:
    return cli.run_main(_command, argv)


if __name__ == "__main__":
    sys.exit(main())
