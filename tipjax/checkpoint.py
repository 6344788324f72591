"""Orbax checkpoints of a run: student params, optimizer state, step, rng, skipped count and prompt-iterator state.

The teacher is frozen and never checkpointed. Saves go to a temporary directory that orbax renames when
complete, so a run killed mid-save restarts from the last finished step. `restore` takes an abstract state
(shapes, dtypes and shardings) and places every array straight onto its sharding.

A step that cannot be read (an empty or half-copied folder, a truncated array file, garbage metadata) is
skipped, with one log line saying why, and the newest step that reads cleanly is used instead. When the
trainer resumes, the folders of steps after the restored one are renamed `<step>.unreadable` or
`<step>.superseded` (kept, never deleted): orbax refuses to save a step at or below the newest folder it
sees, so leaving them would silently stop checkpointing until the run passed them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import orbax.checkpoint as ocp

from tipjax.cli import UserError
from tipjax.config_loader import ConfigError
from tipjax.config_schema import CheckpointSpec

STATE, PROMPTS = "state", "prompts"
UNREADABLE, SUPERSEDED = ".unreadable", ".superseded"  # suffixes of set-aside step folders

log = logging.getLogger(__name__)


class _UnretrievedReadErrors(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" report (a multi-line traceback, printed whenever garbage
    collection gets to it) for orbax's sibling read tasks of a failed restore: the failure itself is already
    reported in one line (the "skipped checkpoint" warning or CheckpointError)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Task exception was never retrieved") and "orbax" in message)


logging.getLogger("asyncio").addFilter(_UnretrievedReadErrors())
_barriers = itertools.count()
_quiet = False  # whether _quiet_abandoned_reads has installed its filter


class CheckpointError(UserError):
    """A checkpoint that was asked for is missing or unreadable, or none is readable."""


class Restored(NamedTuple):
    step: int
    state: Any
    prompt_state: dict


class Checkpointer:
    def __init__(self, directory: str | Path, spec: CheckpointSpec):
        if spec.keep < 1:
            raise ConfigError(f"checkpoint.keep must be >= 1 (a run resumes from its last checkpoint), got {spec.keep}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=spec.keep, keep_period=spec.keep_period or None, create=True,
            enable_async_checkpointing=spec.async_save, cleanup_tmp_directories=True)
        self.spec = spec
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, PROMPTS))

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Finished steps with every item present (not yet read, so one may still turn out corrupt)."""
        return [s for s in sorted(self.manager.all_steps()) if self._complete(s)]

    def save(self, step: int, state: Any, prompt_state: dict, *, force: bool = False) -> bool:
        # A stray empty or half-copied folder at or after `step` would make orbax skip this save.
        stray = [s for s in self.manager.all_steps() if s >= step and not self._complete(s)]
        if stray:
            self._set_aside(dict.fromkeys(stray, UNREADABLE))
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(_to_disk(state)),
                                     PROMPTS: ocp.args.JsonSave(prompt_state)})
        return self.manager.save(step, args=args, force=force)

    def should_save(self, step: int) -> bool:
        return self.spec.every > 0 and step % self.spec.every == 0

    def restore(self, step: int | None, abstract_state: Any) -> Restored:
        """(step, state, prompt-iterator state), the arrays placed onto abstract_state's shardings.

        step=None: the newest step that reads cleanly; the unreadable newer ones are logged and set aside.
        step=N: exactly N, or a CheckpointError; newer steps are set aside as superseded. Either way the
        resumed run can then save its own checkpoints under the step numbers after the one restored.
        """
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(_to_disk(abstract_state)),
                                     PROMPTS: ocp.args.JsonRestore()})
        step, restored, skipped = self._first_readable(step, lambda s: self.manager.restore(s, args=args))
        later = [s for s in self.manager.all_steps() if s > step]
        if later:
            self._set_aside({s: UNREADABLE if s in skipped else SUPERSEDED for s in later})
        return Restored(step, _from_disk(restored[STATE], abstract_state), restored[PROMPTS])

    def restore_model(self, step: int | None, abstract_model: Any) -> tuple[int, Any]:
        """(step, the trained model) for export and evaluation, without reading the optimizer state.

        Read-only: unreadable steps are skipped and logged as in `restore`, but left where they are.
        """
        # orbax stores the pytree as nested dicts keyed by attribute names; ask for that subtree only.
        flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_model)
        target: dict = {}
        for path, leaf in flat:
            node = target
            names = [_key_name(k) for k in path]
            for name in names[:-1]:
                node = node.setdefault(name, {})
            node[names[-1]] = leaf
        item = {_MODEL_ON_DISK: target}
        args = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(item))

        def read(candidate: int):
            # A checkpointer of its own: the manager binds each item to the handler of its first restore.
            with ocp.PyTreeCheckpointer() as reader:
                return reader.restore(self._step_dir(candidate) / STATE, args=args)

        step, restored, _ = self._first_readable(step, read)
        leaves = []
        for path, _ in flat:
            node = restored[_MODEL_ON_DISK]
            for k in path:
                node = node[_key_name(k)]
            leaves.append(node)
        return step, jax.tree_util.tree_unflatten(treedef, leaves)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # --- reading past bad steps ---------------------------------------------------------------------------

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _complete(self, step: int) -> bool:
        folder = self._step_dir(step)
        return all((folder / item).is_dir() and any((folder / item).iterdir()) for item in (STATE, PROMPTS))

    def _first_readable(self, step: int | None, read: Callable[[int], Any]) -> tuple[int, Any, list[int]]:
        """(step, what read(step) returned, newer steps skipped as unreadable)."""
        _quiet_abandoned_reads()
        if step is not None:
            if step not in self.manager.all_steps():
                raise CheckpointError(f"no checkpoint for step {step}; available steps: {_listing(self.all_steps())}",
                                      self.directory)
            if not self._complete(step):
                raise CheckpointError(f"checkpoint step {step} is incomplete (an item folder is missing or empty); "
                                      f"available steps: {_listing(self.all_steps())}", self._step_dir(step))
            try:
                return step, read(step), []
            except Exception as err:
                raise CheckpointError(f"checkpoint step {step} is unreadable: {_reason(err)}", self._step_dir(step),
                                      hint="omit the step to use the newest readable one") from err
        skipped = []
        for candidate in sorted(self.manager.all_steps(), reverse=True):
            if not self._complete(candidate):
                why = "incomplete: an item folder is missing or empty"
            else:
                try:
                    return candidate, read(candidate), skipped
                except Exception as err:  # corrupt files raise anything from KeyError to tensorstore's ValueError
                    why = _reason(err)
            log.warning("skipped checkpoint step %d (%s): %s", candidate, self._step_dir(candidate), why)
            skipped.append(candidate)
        if skipped:
            raise CheckpointError(f"no readable checkpoint (skipped steps {_listing(sorted(skipped))})", self.directory)
        raise CheckpointError("no checkpoint", self.directory)

    def _set_aside(self, suffixes: dict[int, str]) -> None:
        """Renames step folders to `<step><suffix>[.k]`, names orbax neither lists nor deletes."""
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            for step, suffix in suffixes.items():
                folder = self._step_dir(step)
                if not folder.exists():
                    continue
                target = folder.with_name(folder.name + suffix)
                for k in itertools.count(1):
                    if not target.exists():
                        break
                    target = folder.with_name(f"{folder.name}{suffix}.{k}")
                folder.rename(target)
                log.warning("moved checkpoint step %d aside to %s", step, target)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"tipjax_set_aside_{next(_barriers)}")
        self.manager.reload()


# On disk the trained model sits under "params", TrainState's field name before it was called `model`: runs that
# earlier tipjax versions saved still resume, evaluate and export.
_MODEL_ON_DISK = "params"


def _disk_name(field: str) -> str:
    return _MODEL_ON_DISK if field == "model" else field


def _to_disk(state: Any) -> Any:
    """A TrainState as the dict orbax stores (field names, `model` as _MODEL_ON_DISK); other trees as they are."""
    if not dataclasses.is_dataclass(state):
        return state
    return {_disk_name(f.name): getattr(state, f.name) for f in dataclasses.fields(state)}


def _from_disk(tree: Any, like: Any) -> Any:
    if not dataclasses.is_dataclass(like):
        return tree
    return type(like)(**{f.name: tree[_disk_name(f.name)] for f in dataclasses.fields(like)})


def _quiet_abandoned_reads() -> None:
    """Drops the 'Event loop is closed' tracebacks of a failed restore, and only those.

    orbax abandons a restore at its first bad array; the other reads complete into the closed event loop,
    each printing a traceback through sys.unraisablehook that buries the one line saying what happened.
    Installed before reading, since those callbacks can fire before the restore's own error surfaces.
    """
    global _quiet
    if _quiet:
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        err = unraisable.exc_value
        if not (isinstance(err, RuntimeError) and str(err) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    _quiet = True


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _listing(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) or "none"


def _key_name(key) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    raise TypeError(f"unexpected pytree key {key!r}")
