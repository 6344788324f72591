"""From config specs to live objects: the device mesh, models placed on it, and the optimizer state.

Shared by every entry point (the OPD trainer, SFT, dry runs, benchmarks), so each builds its parts the same way
and a run without a teacher or a rollout (SFT) simply does not call those builders.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from tipjax import models, optim
from tipjax.config_loader import ConfigError


def mesh_for(spec, n_devices: int):
    """The (data, fsdp, tensor) mesh of a MeshSpec; data=-1 takes every device fsdp and tensor leave."""
    data = spec.data if spec.data > 0 else n_devices // (spec.fsdp * spec.tensor)
    if not 0 < data * spec.fsdp * spec.tensor <= n_devices:
        raise ConfigError(f"mesh data={data} x fsdp={spec.fsdp} x tensor={spec.tensor} needs more than the "
                         f"{n_devices} devices (mesh.*)")
    return models.make_mesh(data=data, fsdp=spec.fsdp, tensor=spec.tensor)


def devices_needed(spec) -> int:
    """The device count a MeshSpec asks for (data=-1 counts as 1): what a dry run fakes by default."""
    return max(spec.data, 1) * spec.fsdp * spec.tensor


def model_config(spec, name: str = "student"):
    """The ModelConfig of a ModelSpec (`name` is its config key, for errors): HF folder, preset or arch dict."""
    dtypes = dict(param_dtype=spec.param_dtype, compute_dtype=spec.compute_dtype, remat=spec.remat,
                  attention=spec.attention, query_chunk=spec.query_chunk,
                  decode_attention=spec.decode_attention)
    if spec.preset is not None and spec.preset not in models.PRESETS:
        raise ConfigError(f"{name}.preset={spec.preset!r} is unknown; known: {sorted(models.PRESETS)}")
    if spec.path is not None:
        hf = json.loads((Path(spec.path) / "config.json").read_text())
        cfg = models.ModelConfig.from_hf_dict(hf, source_dir=spec.path, **dtypes)
        if spec.preset is not None:
            _check_against_preset(cfg, models.PRESETS[spec.preset], spec, name)
        return cfg
    if spec.preset is not None:
        return models.PRESETS[spec.preset].replace(**dtypes)
    return models.ModelConfig.from_hf_dict(dict(spec.arch), **dtypes)


def _check_against_preset(cfg, preset, spec, name) -> None:
    """A config file names the pair it was written for; a folder of another shape is a mistake, not a variant."""
    for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size"):
        if getattr(cfg, field) != getattr(preset, field):
            raise ConfigError(f"{spec.path}: {field}={getattr(cfg, field)} but {name}.preset={spec.preset!r} has "
                             f"{getattr(preset, field)}; fix {name}.path or set {name}.preset=None")


def model(spec, mesh, *, abstract: bool, name: str = "student"):
    """The model placed on the mesh with the storage rules (abstract: ShapeDtypeStructs with shardings)."""
    cfg = model_config(spec, name)
    if abstract:
        return models.abstract(cfg, mesh=mesh, rules=models.STORAGE_RULES)
    if spec.path is not None:
        return models.load_hf(spec.path, dtype=cfg.param_dtype, compute_dtype=cfg.compute_dtype, mesh=mesh,
                              rules=models.STORAGE_RULES, remat=cfg.remat, attention=cfg.attention,
                              query_chunk=cfg.query_chunk, decode_attention=cfg.decode_attention)
    return models.init(cfg, jax.random.PRNGKey(spec.init_seed), mesh=mesh, rules=models.STORAGE_RULES)


def split_sharding(mesh):
    """Sharding of [parts, rows, ...] arrays (micro-batches, rollout groups): rows like the batch axis."""
    spec = models.logical_to_spec((None, "batch"), models.STORAGE_RULES, mesh=mesh)
    return jax.sharding.NamedSharding(mesh, spec)


class Optimization:
    """The optimizer, its schedule, the train state's shardings and a compiled initialiser for one student."""

    def __init__(self, spec, total_steps: int, student, mesh):
        self.optimizer = optim.build_optimizer(spec, total_steps)
        self.schedule = optim.learning_rate_schedule(spec, total_steps)
        self.state_shardings = optim.state_shardings(student, self.optimizer, mesh)
        self.init_fn = jax.jit(functools.partial(optim.init_state, optimizer=self.optimizer),
                               out_shardings=self.state_shardings)
        # Shapes only: holding the student itself would keep a second copy alive next to the state's.
        self._student = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), student)

    def abstract_state(self):
        """The train state's shapes, dtypes and shardings, without allocating it (dry runs, restore targets)."""
        shapes = jax.eval_shape(self.init_fn, self._student, jax.ShapeDtypeStruct((2,), jnp.uint32))
        return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes,
                            self.state_shardings)
