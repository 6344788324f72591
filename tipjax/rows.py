"""Splitting a batch's rows into parts (micro-batches, rollout groups) that stay spread over the devices."""

from __future__ import annotations

import jax


def split(x, parts: int, sharding=None):
    """[B, ...] -> [parts, B / parts, ...] with a stride (part j holds rows j, j + parts, ...); None stays None.

    Rows are sharded in contiguous blocks over (data, fsdp); the stride gives every part rows from every
    block, so each micro-batch (or rollout group) stays spread over all devices instead of landing on one.
    """
    if x is None:
        return None
    out = x.reshape(x.shape[0] // parts, parts, *x.shape[1:]).swapaxes(0, 1)
    return out if sharding is None else jax.lax.with_sharding_constraint(out, sharding)


def merge(x):
    """Inverse of split: [parts, B / parts, ...] -> [B, ...] in the original row order."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])
