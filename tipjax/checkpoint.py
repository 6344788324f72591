"""Orbax checkpoints of a run: student params, optimizer state, step, rng, skipped count and prompt-iterator state.

The teacher is frozen and never checkpointed. Saves go to a temporary directory that orbax renames when
complete, so a run killed mid-save restarts from the last finished step. `restore` takes an abstract state
(shapes, dtypes and shardings) and places every array straight onto its sharding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from tipjax.train_config import CheckpointSpec

STATE, PROMPTS = "state", "prompts"


class Checkpointer:
    def __init__(self, directory: str | Path, spec: CheckpointSpec):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=spec.keep, keep_period=spec.keep_period or None, create=True,
            enable_async_checkpointing=spec.async_save, cleanup_tmp_directories=True)
        self.spec = spec
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=(STATE, PROMPTS))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, prompt_state: dict, *, force: bool = False) -> bool:
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), PROMPTS: ocp.args.JsonSave(prompt_state)})
        return self.manager.save(step, args=args, force=force)

    def should_save(self, step: int) -> bool:
        return self.spec.every > 0 and step % self.spec.every == 0

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """(state, prompt-iterator state) of `step` (default the latest) onto abstract_state's shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(abstract_state), PROMPTS: ocp.args.JsonRestore()}))
        return restored[STATE], restored[PROMPTS]

    def restore_params(self, step: int | None, abstract_params: Any) -> Any:
        """Only the student's parameters (for export and evaluation), without reading the optimizer state."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        # orbax stores the pytree as nested dicts keyed by attribute names; ask for that subtree only.
        flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
        target: dict = {}
        for path, leaf in flat:
            node = target
            names = [_key_name(k) for k in path]
            for name in names[:-1]:
                node = node.setdefault(name, {})
            node[names[-1]] = leaf
        restored = self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
            item={"params": target}, restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}),
            partial_restore=True)}))[STATE]["params"]
        leaves = []
        for path, _ in flat:
            node = restored
            for k in path:
                node = node[_key_name(k)]
            leaves.append(node)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _key_name(key) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    raise TypeError(f"unexpected pytree key {key!r}")
