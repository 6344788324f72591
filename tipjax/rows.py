"""Splitting a batch's rows into parts (micro-batches, rollout groups) that stay spread over the devices."""

from __future__ import annotations

import math

import jax


def split(x, parts: int, sharding=None, group: int = 1):
    """[B, ...] -> [parts, B / parts, ...] with a stride (part j holds rows j, j + parts, ...); None stays None.

    Rows are sharded in contiguous blocks over (data, fsdp); the stride gives every part rows from every
    block, so each micro-batch (or rollout group) stays spread over all devices instead of landing on one.
    group > 1 keeps runs of `group` consecutive rows together (a prompt's n samples): part j holds runs
    j, j + parts, ..., the rows of the prompts that split(prompts, parts) gives part j.
    """
    if x is None:
        return None
    out = x.reshape(x.shape[0] // (parts * group), parts, group, *x.shape[1:]).swapaxes(0, 1)
    out = out.reshape(parts, x.shape[0] // parts, *x.shape[1:])
    return out if sharding is None else jax.lax.with_sharding_constraint(out, sharding)


def merge(x, group: int = 1):
    """Inverse of split: [parts, B / parts, ...] -> [B, ...] in the original row order."""
    parts = x.shape[0]
    x = x.reshape(parts, x.shape[1] // group, group, *x.shape[2:]).swapaxes(0, 1)
    return x.reshape(-1, *x.shape[3:])


def shards(sharding) -> int:
    """How many blocks a split sharding (build.split_sharding: [parts, rows, ...]) cuts the rows into; 1 for None."""
    if sharding is None:
        return 1
    axes = sharding.spec[1] if len(sharding.spec) > 1 else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(sharding.mesh.shape[a] for a in axes)
