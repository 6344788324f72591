"""Position chunking: evaluate a per-position function over N positions, C at a time, in one `lax.map`.

This is what keeps vocabulary-sized intermediates at [C, V] instead of [N, V].
"""

import jax
import jax.numpy as jnp
from jax import lax


def map_chunks(fn, arrays, chunk_size, *, remat=False):
    """Apply `fn` to chunks of positions and reassemble its per-position outputs.

    Args:
      fn: takes a tuple of [C, ...] arrays (one chunk of each of `arrays`) and returns a dict of [C] arrays.
      arrays: tuple of [N, ...] arrays sharing the leading position axis.
      chunk_size: C, positions per step (N is padded with zeros to a multiple of C; C is capped at N).
      remat: wrap `fn` in `jax.checkpoint`, so reverse mode stores only each chunk's inputs and recomputes
        its [C, V] logits in the backward pass (a scan otherwise keeps every chunk's residuals alive).

    Returns:
      dict of [N] arrays.

    Chunks are strided: chunk j holds positions j, j + n, j + 2n, ... (n chunks). An N axis sharded over
    devices in contiguous blocks then stays sharded inside every chunk (each device computes its own share
    of each step) instead of being gathered, as a contiguous split would force by scanning over the sharded axis.
    """
    n_pos = arrays[0].shape[0]
    c = max(1, min(chunk_size, n_pos))
    n = -(-n_pos // c)
    pad = n * c - n_pos

    def to_chunks(x):
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return jnp.moveaxis(x.reshape((c, n) + x.shape[1:]), 1, 0)

    body = jax.checkpoint(fn, prevent_cse=False) if remat else fn
    out = lax.map(body, tuple(to_chunks(x) for x in arrays))
    return {k: jnp.moveaxis(v, 0, 1).reshape(n * c)[:n_pos] for k, v in out.items()}


def project(hidden, head):
    """Logits of one chunk in fp32: [C, D] @ [D, V] -> [C, V], accumulated in fp32 whatever the input dtypes."""
    dtype = jnp.promote_types(hidden.dtype, head.dtype)
    return jnp.einsum(
        "CD,DV->CV", hidden.astype(dtype), head.astype(dtype), preferred_element_type=jnp.float32
    )
