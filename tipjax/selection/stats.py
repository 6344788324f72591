"""Per-position TIP statistics (PAPER.md Eq. 2, 3 and Sec. 7.3): fp32, stop-gradient, zero where masked.

Keys of every stats dict, each [B, T]:
  entropy            h_t = H(P_S) / ln V, in [0, 1] (Eq. 2; V is the logits' vocabulary size)
  rkl                KL(P_S || P_T) (Eq. 3, the TIP divergence)
  fkl                KL(P_T || P_S) (the Q3 ranking signal)
  teacher_entropy    H(P_T) / ln V (diagnostic, App. B.1)
  jsd                jsd(beta) (see losses.jsd), when beta is not None
  teacher_token_prob P_T(tokens_t), when tokens are given: tokens[b, t] is the token sampled from the
                     distribution at position t (already shifted by the caller)
  student_token_logprob log P_S(tokens_t), when tokens are given (the sampler's log-probability, recomputed)
"""

import math

import jax
import jax.numpy as jnp

from tipjax.selection import chunks, losses


def position_stats(student_logits, teacher_logits, *, tokens=None, beta=0.5):
    """Statistics at positions [...]: logits [..., V] -> dict of [...] fp32 (no mask, no stop_gradient)."""
    log_v = math.log(student_logits.shape[-1])
    log_ps = losses.log_probs(student_logits)
    log_pt = losses.log_probs(teacher_logits)
    out = {
        "entropy": losses.entropy(log_ps) / log_v,
        "rkl": losses.kl(log_ps, log_pt),
        "fkl": losses.kl(log_pt, log_ps),
        "teacher_entropy": losses.entropy(log_pt) / log_v,
    }
    if beta is not None:
        out["jsd"] = losses.mixture_jsd(log_ps, log_pt, beta)
    if tokens is not None:
        out["teacher_token_prob"] = jnp.exp(jnp.take_along_axis(log_pt, tokens[..., None], axis=-1)[..., 0])
        out["student_token_logprob"] = jnp.take_along_axis(log_ps, tokens[..., None], axis=-1)[..., 0]
    return out


def token_stats(student_logits, teacher_logits, mask, *, tokens=None, beta=0.5):
    """TIP statistics from full logits (tests and small models).

    Args:
      student_logits, teacher_logits: [B, T, V].
      mask: [B, T], nonzero at response positions.
      tokens: optional [B, T] int sampled tokens (adds teacher_token_prob).
      beta: jsd mixture weight; None skips jsd.

    Returns:
      dict of [B, T] fp32 arrays (keys in the module docstring), zero where mask == 0.
    """
    check_logits(student_logits, teacher_logits, mask)
    out = position_stats(
        jax.lax.stop_gradient(student_logits), jax.lax.stop_gradient(teacher_logits), tokens=tokens, beta=beta
    )
    return apply_mask(out, mask)


def token_stats_from_hidden(
    student_hidden, student_head, teacher_hidden, teacher_head, mask, *, chunk_size=512, tokens=None, beta=0.5
):
    """TIP statistics from hidden states, projecting `chunk_size` positions at a time: no [B, T, V] array exists.

    Args:
      student_hidden: [B, T, Ds]; student_head: [Ds, V]; teacher_hidden: [B, T, Dt]; teacher_head: [Dt, V].
        Any float dtype (bf16 is fine): logits are accumulated and normalised in fp32. Heads may be sharded
        over the vocabulary.
      mask: [B, T]; tokens: optional [B, T]; beta: as in `token_stats`.

    Returns:
      dict of [B, T] fp32 arrays, zero where mask == 0.
    """
    check_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask)
    b, t = mask.shape
    student_head, teacher_head = jax.lax.stop_gradient((student_head, teacher_head))
    arrays = (
        jax.lax.stop_gradient(student_hidden).reshape(b * t, -1),
        jax.lax.stop_gradient(teacher_hidden).reshape(b * t, -1),
    )
    if tokens is not None:
        arrays += (tokens.reshape(b * t).astype(jnp.int32),)

    def chunk_stats(chunk):
        logits_s = chunks.project(chunk[0], student_head)
        logits_t = chunks.project(chunk[1], teacher_head)
        return position_stats(logits_s, logits_t, tokens=chunk[2] if tokens is not None else None, beta=beta)

    flat = chunks.map_chunks(chunk_stats, arrays, chunk_size)
    return apply_mask({k: v.reshape(b, t) for k, v in flat.items()}, mask)


def apply_mask(stats, mask):
    """Zero every [B, T] statistic where mask == 0 (where, not multiply: masked inputs may be non-finite)."""
    keep = mask.astype(bool)
    return {k: jnp.where(keep, v, 0.0).astype(jnp.float32) for k, v in stats.items()}


def check_logits(student_logits, teacher_logits, mask):
    if student_logits.ndim != 3 or teacher_logits.ndim != 3:
        raise ValueError(
            f"student_logits {student_logits.shape} and teacher_logits {teacher_logits.shape} must be [B, T, V]"
        )
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"vocabulary mismatch: student_logits has V={student_logits.shape[-1]}, "
            f"teacher_logits has V={teacher_logits.shape[-1]}"
        )
    check_positions(mask, student_logits=student_logits, teacher_logits=teacher_logits)


def check_hidden(student_hidden, student_head, teacher_hidden, teacher_head, mask):
    for name, x, ndim in (
        ("student_hidden", student_hidden, 3),
        ("teacher_hidden", teacher_hidden, 3),
        ("student_head", student_head, 2),
        ("teacher_head", teacher_head, 2),
    ):
        if x.ndim != ndim:
            raise ValueError(f"{name} has shape {x.shape}; expected {ndim} dims")
    if student_head.shape[1] != teacher_head.shape[1]:
        raise ValueError(
            f"vocabulary mismatch: student_head has V={student_head.shape[1]}, teacher_head has V={teacher_head.shape[1]}"
        )
    for name, hidden, head in (("student", student_hidden, student_head), ("teacher", teacher_hidden, teacher_head)):
        if hidden.shape[-1] != head.shape[0]:
            raise ValueError(
                f"{name}_hidden width {hidden.shape[-1]} does not match {name}_head rows {head.shape[0]}"
            )
    check_positions(mask, student_hidden=student_hidden, teacher_hidden=teacher_hidden)


def check_positions(mask, **arrays):
    """Every array's leading [B, T] must equal mask's."""
    if mask.ndim != 2:
        raise ValueError(f"mask has shape {mask.shape}; expected [B, T]")
    for name, x in arrays.items():
        if x.shape[:2] != mask.shape:
            raise ValueError(f"{name} has [B, T] = {tuple(x.shape[:2])} but mask has {tuple(mask.shape)}")
