"""Logical axis names -> mesh axes ('data', 'fsdp', 'tensor').

Every parameter carries logical axes (see decoder.param_specs); a rules table maps each logical name to a
mesh axis (or a tuple of them, or None = replicated). Two tables: STORAGE_RULES for training (FSDP over
`embed` + tensor parallel heads/MLP/vocab) and SAMPLING_RULES (replicated over fsdp, tensor parallel only),
so rollouts do not all-gather weights every decode step. `batch` is the activation batch axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

STORAGE_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("layers", None),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
)

# Sampling keeps the tensor-parallel split and drops FSDP (the embed dim), so decode steps need no gathers.
SAMPLING_RULES: Rules = tuple((name, None if name == "embed" else axes) for name, axes in STORAGE_RULES)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over the first data*fsdp*tensor devices (default: all local)."""
    devices = jax.devices() if devices is None else list(devices)
    n = data * fsdp * tensor
    if n > len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} needs {n} devices, have {len(devices)}")
    return Mesh(np.array(devices[:n]).reshape(data, fsdp, tensor), MESH_AXES)


def logical_to_spec(axes: Sequence[str | None], rules: Rules | Mapping, *, shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> PartitionSpec:
    """PartitionSpec for logical `axes`. With shape and mesh, a dim that the mesh axes do not divide (or a
    mesh axis already used by an earlier dim) is replicated instead, e.g. kv_heads=2 on tensor=4."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        names = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        if mesh is not None:
            names = tuple(a for a in names if a in mesh.shape)
            size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
            if shape is not None and shape[i] % size:
                names = ()
        if used & set(names):
            names = ()
        used |= set(names)
        spec.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*spec)


def _is_param(x) -> bool:
    return isinstance(x, nnx.Variable)


def model_shardings(model, mesh: Mesh, rules: Rules = STORAGE_RULES):
    """The model's tree (a Decoder or models.abstract) with a NamedSharding in place of every parameter."""

    def sharding(p: nnx.Variable):
        spec = logical_to_spec(p.get_metadata("axes"), rules, shape=p.shape, mesh=mesh)
        return p.replace(NamedSharding(mesh, spec))

    return jax.tree.map(sharding, model, is_leaf=_is_param)


def shard(model, mesh: Mesh, rules: Rules = STORAGE_RULES):
    """Moves (reshards) every parameter of model onto its sharding under rules."""
    return jax.device_put(model, model_shardings(model, mesh, rules))


def batch_sharding(mesh: Mesh, rules: Rules = STORAGE_RULES, ndim: int = 2) -> NamedSharding:
    """Sharding for an activation whose first dim is the batch, e.g. input_ids [B, T]."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules, mesh=mesh))


# KVCache leaves' logical axes: each layer's k, v [B, K, S, H]; mask [B, S]; index scalar (a PromptCache's alike).
CACHE_AXES = {"k": ("batch", "kv_heads", None, "head_dim"), "v": ("batch", "kv_heads", None, "head_dim"),
              "mask": ("batch", None), "index": ()}


def cache_shardings(cache, mesh: Mesh, rules: Rules = SAMPLING_RULES):
    """A KVCache (or its jax.eval_shape) with a NamedSharding per leaf: batch over data/fsdp, kv heads over tensor."""
    def spec(name, x):
        return NamedSharding(mesh, logical_to_spec(CACHE_AXES[name], rules, shape=x.shape, mesh=mesh))

    prompt = cache.prompt
    if prompt is not None:  # a shared prompt's leaves: prompts where the rows have rows
        prompt = prompt.replace(k=tuple(spec("k", x) for x in prompt.k), v=tuple(spec("v", x) for x in prompt.v),
                                mask=spec("mask", prompt.mask),
                                starts=NamedSharding(mesh, logical_to_spec(("batch",), rules, shape=prompt.starts.shape,
                                                                          mesh=mesh)))
    return type(cache)(k=tuple(spec("k", x) for x in cache.k), v=tuple(spec("v", x) for x in cache.v),
                       mask=spec("mask", cache.mask), index=spec("index", cache.index), prompt=prompt)
