"""float64 numpy restatements of the TIP equations (PAPER.md sections 1-3), shared by the selection tests.

Written from the paper, not from tipjax: loops and sorts, no chunking, no static shapes.
"""

import fractions
import itertools
import math

import numpy as np


def log_softmax(z):
    z = np.asarray(z, np.float64)
    with np.errstate(invalid="ignore"):
        top = np.max(z, axis=-1, keepdims=True)
        return z - top - np.log(np.sum(np.exp(z - top), axis=-1, keepdims=True))


def kl(log_p, log_q):
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(-1)


def stats(student_logits, teacher_logits, beta=0.5, tokens=None):
    """Eq. 2, Eq. 3, forward KL, teacher entropy, jsd(beta), P_T(token): dict of [...] float64."""
    ls, lt = log_softmax(student_logits), log_softmax(teacher_logits)
    ps, pt = np.exp(ls), np.exp(lt)
    log_v = math.log(ls.shape[-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        m = beta * pt + (1 - beta) * ps
        log_m = np.log(m)
        out = {
            "entropy": -np.where(ps > 0, ps * ls, 0.0).sum(-1) / log_v,
            "teacher_entropy": -np.where(pt > 0, pt * lt, 0.0).sum(-1) / log_v,
            "rkl": kl(ls, lt),
            "fkl": kl(lt, ls),
            "jsd": beta * kl(lt, log_m) + (1 - beta) * kl(ls, log_m),
        }
    if tokens is not None:
        out["teacher_token_prob"] = np.take_along_axis(pt, tokens[..., None], -1)[..., 0]
    return out


def keep_count(ratio, m):
    """floor(ratio * m) in exact rational arithmetic (ratio as the decimal it was written as)."""
    return math.floor(fractions.Fraction(str(ratio)) * m)


def normalise(h, d, mask, scope="batch", q=0.98):
    """Entropy clipped at its q-quantile, both axes min-max normalised, over valid tokens (per row if scope=rollout)."""
    h_hat, d_hat = np.zeros_like(h, np.float64), np.zeros_like(d, np.float64)
    rows = np.arange(len(mask))[:, None]
    groups = [rows >= 0] if scope == "batch" else [rows == i for i in range(len(mask))]
    for g in groups:
        sel = g & (mask > 0)
        if not sel.any():
            continue
        hv = np.minimum(h[sel].astype(np.float64), np.quantile(h[sel].astype(np.float64), q))
        for vals, out in ((hv, h_hat), (d[sel].astype(np.float64), d_hat)):
            spread = vals.max() - vals.min()
            out[sel] = (vals - vals.min()) / spread if spread > 0 else 0.0
    return h_hat, d_hat


def rule_score(rule, st, mask, scope="batch"):
    """Deterministic rule scores (higher kept first), float64 [B, T]."""
    h_hat, d_hat = normalise(st["entropy"], st["rkl"], mask, scope)
    soft_or = 1.0 - (1.0 - h_hat) * (1.0 - d_hat)  # Eq. 7, second form
    return {
        "entropy_topk": h_hat,
        "soft_or": soft_or,
        "soft_or_bottom": -soft_or,
        "q3": st["fkl"].astype(np.float64) * (1 - h_hat),
        "div": st["rkl"].astype(np.float64),
        "all": np.zeros(mask.shape),
    }[rule]


def select_rows(score, mask, ratio, *, min_one=False, all_tokens=False):
    """Per row: stable descending sort of the valid positions, keep floor(ratio * m_i). List of index arrays."""
    rows = []
    for s, mk in zip(score, mask):
        pos = np.flatnonzero(mk)
        k = len(pos) if all_tokens else keep_count(ratio, len(pos))
        if min_one and len(pos):
            k = max(k, 1)
        rows.append(pos[np.argsort(-s[pos], kind="stable")][:k])
    return rows


def inclusion_probabilities(weights, k):
    """Exact P(t in sample) for k successive draws without replacement with p proportional to weights."""
    w = np.asarray(weights, np.float64)
    incl = np.zeros(len(w))
    for seq in itertools.permutations(range(len(w)), k):
        prob, left = 1.0, w.sum()
        for i in seq:
            prob *= w[i] / left
            left -= w[i]
        incl[list(seq)] += prob
    return incl


def test_inclusion_probabilities_reference():
    """The enumeration sums to k, is uniform for equal weights and equals p_t for one draw."""
    w = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(inclusion_probabilities(w, 2).sum(), 2.0)
    np.testing.assert_allclose(inclusion_probabilities(np.ones(5), 2), np.full(5, 0.4))
    np.testing.assert_allclose(inclusion_probabilities(w, 1), w / w.sum())


def test_keep_count_reference():
    assert keep_count(0.7, 10) == 7 and keep_count(0.29, 100) == 29 and keep_count(0.5, 1) == 0
