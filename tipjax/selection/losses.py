"""Divergences between the student's and the teacher's next-token distributions, over the full vocabulary.

Names follow PAPER.md section 12. Every function maps logits [..., V] (any float dtype) to [...] fp32 and is
differentiable in both arguments. Entries with zero probability (logit -inf) contribute 0 * log 0 = 0, so
masked vocabularies never produce NaN.
"""

import jax
import jax.numpy as jnp


def log_probs(logits):
    """fp32 log-softmax over the last axis: [..., V] -> [..., V]."""
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def kl(log_p, log_q):
    """KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)) from log-probabilities [..., V] -> [...].

    The inner where keeps value and gradient finite where P(v) = 0 (0 log 0 = 0).
    """
    p = jnp.exp(log_p)
    diff = jnp.where(p > 0, log_p - log_q, 0.0)
    return jnp.sum(p * diff, axis=-1)


def entropy(log_p):
    """H(P) = -sum_v P(v) log P(v) in nats from log-probabilities [..., V] -> [...]."""
    p = jnp.exp(log_p)
    return -jnp.sum(p * jnp.where(p > 0, log_p, 0.0), axis=-1)


def mixture_jsd(log_ps, log_pt, beta):
    """jsd (see `jsd`) from student and teacher log-probabilities [..., V] -> [...]."""
    ps, pt = jnp.exp(log_ps), jnp.exp(log_pt)
    beta = jnp.asarray(beta, jnp.float32)
    m = beta * pt + (1.0 - beta) * ps
    # Probability space: log(M) of a mixture with a zero weight stays exact, where logaddexp(-inf, -inf) has NaN gradients.
    log_m = jnp.log(jnp.where(m > 0, m, 1.0))
    # Guard the weights so 0 * inf (a KL that is infinite at an end point) reads as 0.
    teacher_part = jnp.where(beta > 0, beta * kl(log_pt, log_m), 0.0)
    student_part = jnp.where(beta < 1, (1.0 - beta) * kl(log_ps, log_m), 0.0)
    return teacher_part + student_part


def rkl(student_logits, teacher_logits):
    """Reverse KL, the OPD loss (Eq. 1) and TIP divergence (Eq. 3).

    rkl = KL(P_S || P_T) = sum_v P_S(v) (log P_S(v) - log P_T(v)).   [..., V], [..., V] -> [...]
    """
    return kl(log_probs(student_logits), log_probs(teacher_logits))


def fkl(student_logits, teacher_logits):
    """Forward KL, the Q3 ranking signal (Sec. 7.3).

    fkl = KL(P_T || P_S) = sum_v P_T(v) (log P_T(v) - log P_S(v)).   [..., V], [..., V] -> [...]
    """
    return kl(log_probs(teacher_logits), log_probs(student_logits))


def jsd(student_logits, teacher_logits, beta=0.5):
    """Generalised Jensen-Shannon divergence (TRL's convention).

    M = beta P_T + (1 - beta) P_S,  jsd = beta KL(P_T || M) + (1 - beta) KL(P_S || M).   -> [...]

    beta = 0.5 is the symmetric JSD (at most ln 2). Both ends vanish: M equals P_S at beta = 0 and P_T at
    beta = 1. The scaled limits are the KLs: jsd / beta -> fkl as beta -> 0 and jsd / (1 - beta) -> rkl as
    beta -> 1 (first-order expansion of log M around the end point).
    """
    return mixture_jsd(log_probs(student_logits), log_probs(teacher_logits), beta)


DIVERGENCES = ("rkl", "fkl", "jsd")


def divergence(name, student_logits, teacher_logits, *, beta=0.5):
    """Dispatch by name: "rkl" | "fkl" | "jsd" (with beta). [..., V], [..., V] -> [...] fp32."""
    check_divergence(name)
    if name == "rkl":
        return rkl(student_logits, teacher_logits)
    if name == "fkl":
        return fkl(student_logits, teacher_logits)
    return jsd(student_logits, teacher_logits, beta)


def check_divergence(name):
    if name not in DIVERGENCES:
        raise ValueError(f"divergence={name!r} is unknown; valid: {', '.join(DIVERGENCES)}")
