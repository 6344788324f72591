"""Position chunking: evaluate a per-position function over N positions, C at a time, in one scan.

This is what keeps vocabulary-sized intermediates at [C, V] instead of [N, V].

Chunks are strided: with n chunks, chunk j holds positions j, j + n, j + 2n, ... An N axis sharded over
devices in contiguous blocks then stays sharded inside every chunk (each device computes its share of
each step), where scanning over a contiguous split would slice the sharded axis and gather it.
"""

import jax
import jax.numpy as jnp
from jax import lax

from tipjax.models import layers


def _layout(n_pos, chunk_size):
    c = max(1, min(chunk_size, n_pos))
    return c, -(-n_pos // c)


def to_chunks(x, chunk_size):
    """[N, ...] -> [n, C, ...], zero-padded to n * C positions."""
    c, n = _layout(x.shape[0], chunk_size)
    x = jnp.pad(x, [(0, n * c - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return jnp.moveaxis(x.reshape((c, n) + x.shape[1:]), 1, 0)


def from_chunks(x, n_pos):
    """[n, C, ...] -> [N, ...], the inverse of `to_chunks`."""
    n, c = x.shape[:2]
    return jnp.moveaxis(x, 0, 1).reshape((n * c,) + x.shape[2:])[:n_pos]


def scan_chunks(fn, init, arrays, chunk_size):
    """Scan `fn(carry, chunk) -> (carry, outputs)` over chunks of positions.

    arrays: tuple of [N, ...] arrays (None entries pass through as None); chunk: the same tuple of [C, ...].
    outputs: dict of [C, ...]. Returns (carry, dict of [N, ...]).
    """
    n_pos = next(x for x in arrays if x is not None).shape[0]
    xs = tuple(None if x is None else to_chunks(x, chunk_size) for x in arrays)
    carry, out = lax.scan(fn, init, xs)
    return carry, {k: from_chunks(v, n_pos) for k, v in out.items()}


def map_chunks(fn, arrays, chunk_size, *, remat=False):
    """Apply `fn(chunk) -> dict of [C, ...]` to every chunk; returns dict of [N, ...].

    remat wraps `fn` in `jax.checkpoint`, so reverse mode stores only each chunk's inputs and recomputes its
    [C, V] logits in the backward pass (a scan otherwise keeps every chunk's residuals alive).
    """
    body = jax.checkpoint(fn, prevent_cse=False) if remat else fn

    def step(carry, chunk):
        return carry, body(chunk)

    return scan_chunks(step, (), arrays, chunk_size)[1]


def zero_unweighted(student_hidden, teacher_hidden, weight):
    """Zero the hidden states [C, D] of positions whose loss weight [C] is 0.

    Their loss terms are discarded anyway, but a non-finite hidden state there (a NaN row the selection
    skipped, or a buffer slot pointing at it) would still reach the gradients as 0 * NaN.
    """
    live = (weight > 0)[:, None]
    return jnp.where(live, student_hidden, 0), jnp.where(live, teacher_hidden, 0)


def project(hidden, head):
    """Logits of one chunk in fp32: [C, D] @ [D, V] -> [C, V], multiplied in the hidden state's (compute) dtype
    and accumulated in fp32, gradients too (`layers.logits`, which `Decoder.logits` is).

    Not the promoted dtype: an fp32 master head against bf16 hidden states made this the step's largest fp32
    (TF32 on GPUs) matmul, three of them with its gradients, and the loss scored other logits than the
    sampler drew from.
    """
    return layers.logits(hidden, head)
