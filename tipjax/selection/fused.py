"""Fused chunked divergence: lm_head projection + divergence + its gradient, one chunk of positions at a time.

The forward scan computes, per chunk, the logits [C, V], the weighted divergence and its gradient with
respect to the student logits, and immediately contracts that gradient into the student hidden-state and
head gradients (dh = g W^T, dW += h^T g, accumulated in fp32). The backward pass only scales them by the
incoming cotangent. Nothing of size [N, V] is stored and no logits are recomputed: the same memory as a
rematerialised scan with one projection pass fewer per chunk (Liger-kernel style fused linear loss).
Without differentiation the primal path computes only the loss.
"""

import functools

import jax
import jax.numpy as jnp

from tipjax.models import layers
from tipjax.selection import chunks, losses, stats


def _scan(
    student_hidden, student_head, teacher_hidden, teacher_head, scale, tokens, divergence, beta, chunk_size, with_stats, grads
):
    """Returns (total, per-position stats) and, if grads, (dh [N, Ds], dW [Ds, V] fp32)."""

    def step(carry, chunk):
        hs, ht, w, tok = chunk
        hs, ht = chunks.zero_unweighted(hs, ht, w)
        logits_s = chunks.project(hs, student_head)
        logits_t = chunks.project(ht, teacher_head)

        def weighted(z):
            div = losses.divergence(divergence, z, logits_t, beta=beta)
            # where, not multiply: padded or masked positions must not turn 0 * inf into NaN.
            return jnp.sum(jnp.where(w > 0, div, 0.0) * w)

        out = stats.position_stats(logits_s, logits_t, tokens=tok, beta=None) if with_stats else {}
        if not grads:
            return carry + weighted(logits_s), out
        total, dw = carry
        value, g = jax.value_and_grad(weighted)(logits_s)
        out["dh"], dw_chunk = layers.logits_grads(hs, student_head, g)  # chunks.project's backward, fp32 dw
        return (total + value, dw + dw_chunk), out

    init = jnp.float32(0)
    if grads:
        init = (init, jnp.zeros(student_head.shape, jnp.float32))
    return chunks.scan_chunks(step, init, (student_hidden, teacher_hidden, scale, tokens), chunk_size)


# beta is an ordinary (zero-cotangent) argument, not a static one, so a scheduled beta may be traced.
@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 8, 9))
def fused_divergence(
    student_hidden, student_head, teacher_hidden, teacher_head, scale, tokens, divergence, beta, chunk_size, with_stats
):
    """sum_n scale_n * divergence(student_n, teacher_n), and the stop-gradient statistics of every position.

    Args:
      student_hidden [N, Ds], student_head [Ds, V], teacher_hidden [N, Dt], teacher_head [Dt, V]; scale [N]
      fp32 loss weights; tokens None or [N] int (teacher_token_prob); beta [] (a float or traced). divergence,
      chunk_size and with_stats (return the statistics) are static.

    Returns:
      (total [] fp32, dict of [N] fp32 statistics, empty unless with_stats). Differentiable in student_hidden
      and student_head only.
    """
    return _scan(
        student_hidden, student_head, teacher_hidden, teacher_head, scale, tokens,
        divergence, beta, chunk_size, with_stats, False,
    )


def _forward(
    student_hidden, student_head, teacher_hidden, teacher_head, scale, tokens, divergence, beta, chunk_size, with_stats
):
    (total, dw), out = _scan(
        student_hidden, student_head, teacher_hidden, teacher_head, scale, tokens,
        divergence, beta, chunk_size, with_stats, True,
    )
    dh = out.pop("dh").astype(student_hidden.dtype)
    return (total, out), (dh, dw.astype(student_head.dtype))


def _backward(divergence, chunk_size, with_stats, residuals, cotangent):
    dh, dw = residuals
    ct = cotangent[0]
    return ((ct * dh).astype(dh.dtype), (ct * dw).astype(dw.dtype), None, None, None, None, None)


fused_divergence.defvjp(_forward, _backward)
