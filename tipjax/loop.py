"""A training run's life in its workdir, shared by the OPD trainer and SFT: identity check, restore or init,
metadata, the step loop with metrics and checkpoints, and stopping a run that no longer learns.

Order matters for not losing anything: the workdir's recorded identity (model shapes, rule, data source) is
checked before any model loads, and the metadata files are (re)written only after a restore succeeded, so a
failed resume leaves a workdir whose checkpoints can still be exported and evaluated.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax

from tipjax import checkpoint as ckpt_lib
from tipjax import metrics_log
from tipjax.workdir import CHECKPOINTS, RUN_FILE

log = logging.getLogger("tipjax.loop")

class WorkdirMismatch(ValueError):
    """A workdir holds a run of another configuration."""


class NonFiniteTraining(RuntimeError):
    """Too many consecutive updates were skipped because a quantity was not finite."""


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def check_identity(workdir: Path, identity: dict, *, resume: bool) -> None:
    """Fails, naming the differing keys, when `workdir` holds a run whose identity differs from this one."""
    path = workdir / RUN_FILE
    has_checkpoints = (workdir / CHECKPOINTS).is_dir() and any((workdir / CHECKPOINTS).iterdir())
    if not resume and has_checkpoints:
        raise WorkdirMismatch(f"--workdir {workdir} already holds checkpoints and resume=False; use a new --workdir")
    if not path.is_file():
        return
    old = json.loads(path.read_text()).get("identity")
    if old is None:
        return
    old, new = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(identity)))
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differing:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:4])
        raise WorkdirMismatch(f"--workdir {workdir} holds a run of another configuration ({shown}); "
                              f"use a new --workdir")


def write_metadata(workdir: Path, files: dict[str, str]) -> None:
    """Writes each file atomically (temp + rename)."""
    for name, text in files.items():
        tmp = workdir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(workdir / name)


def restore_or_init(checkpoints: ckpt_lib.Checkpointer, abstract_state, init: Callable[[], Any], *,
                    step: int | None = None):
    """(state, prompt-iterator state or None, restored step or None): the newest good checkpoint, else `init()`."""
    if step is None and checkpoints.latest_step() is None:
        return init(), None, None
    # Restore straight into the shardings: no throwaway optimizer state is allocated first.
    restored_step, state, prompt_state = checkpoints.restore(step, abstract_state)
    log.info("resumed from step %d", restored_step)
    return state, prompt_state, restored_step


def non_finite_error(metrics: dict, max_skipped: int, step: int) -> NonFiniteTraining | None:
    """The error that stops a run after max_skipped consecutive skipped updates, naming the first non-finite
    quantity; None while the run learns."""
    if int(metrics.get("skipped_run", 0)) < max_skipped:
        return None
    order = (("n_teacher_nonfinite", "teacher hidden states (teacher weights or inputs)"),
             ("n_student_nonfinite", "student hidden states (student weights)"),
             ("loss_finite", "loss"), ("grads_finite", "gradients"))
    culprit = "loss or gradients"
    for key, name in order:
        value = metrics.get(key)
        if value is not None and (value > 0 if key.startswith("n_") else value == 0):
            culprit = name
            break
    return NonFiniteTraining(f"{max_skipped} consecutive updates skipped up to step {step}: non-finite {culprit} "
                            f"(optim.max_skipped)")


def _peak_memory() -> dict:
    stats = jax.local_devices()[0].memory_stats() or {}
    return {"peak_memory_gib": stats["peak_bytes_in_use"] / 2.0**30} if "peak_bytes_in_use" in stats else {}


def run_steps(state, step_fn: Callable, batches: Iterator, *, start: int, end: int, total: int,
              checkpoints: ckpt_lib.Checkpointer, logbook: metrics_log.MetricsLog, source_state: Callable[[], Any],
              max_skipped: int, token_key: str | None = None, before_step: Callable | None = None,
              after_step: Callable | None = None, watch: Callable | None = None) -> tuple[Any, dict]:
    """Steps start+1 .. end: `state, metrics = step_fn(state, batch)` on each batch, then metrics, hooks, saves.

    before_step(step, state, batch) -> dict of extra metrics measured before the step (e.g. rollout timing);
    after_step(step, state) -> dict of extra metrics logged after it (e.g. periodic evaluation).
    watch(metrics): looks at each step's host metrics (e.g. to warn about a quantity out of its range).
    Checkpoints are saved every checkpoint.every steps and at `end`, never for a run that stopped learning.
    """
    from tqdm import tqdm

    last: dict = {}
    bar = tqdm(range(start, end), initial=start, total=total, disable=jax.process_index() != 0, desc="train")
    for step in bar:
        batch = next(batches)
        extra = before_step(step + 1, state, batch) if before_step else {}
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - t0
        metrics.update(step_seconds=seconds, **_peak_memory())
        if token_key is not None:
            tokens = float(metrics[token_key])
            metrics["tokens_per_s"] = tokens / seconds
            if "rollout_seconds" in extra:
                rollout = extra.pop("rollout_seconds")
                extra.update(rollout_tokens_per_s=tokens / rollout,
                             update_tokens_per_s=tokens / max(seconds - rollout, 1e-9))
        metrics.update(extra)
        if watch is not None:
            watch(metrics)
        error = non_finite_error(metrics, max_skipped, step + 1)
        if error is None and after_step is not None:
            metrics.update(after_step(step + 1, state) or {})
        last = logbook.write(step + 1, metrics)  # one row per step
        bar.set_postfix(metrics_log.console_summary(last))
        if error is not None:
            raise error
        if checkpoints.should_save(step + 1) or step + 1 == end:
            checkpoints.save(step + 1, state, source_state(), force=step + 1 == end)
    return state, last
