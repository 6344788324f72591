"""Pure decoder maths: RMSNorm, rotary embeddings (with llama3 scaling), positions, SwiGLU.

Attention lives in attention.py. Shape letters as in decoder.py: B batch, T query positions, S key positions,
D model width, H head dim, F MLP width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tipjax.models.config import RopeScaling


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x [..., X] normalised over its last axis with fp32 statistics, scaled by weight [X]; dtype of x."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * weight.astype(x.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """Inverse frequencies [H/2] (float32), as transformers computes them, including llama3 scaling."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is not None:
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are stretched by `factor`, short ones kept, the band between interpolated.
        scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """positions [...] -> (cos, sin) [..., H/2] fp32 of the rotation angles."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(angles), jnp.sin(angles)


def rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x [B, T, N, H] by positions [B, T] (half-split layout, as HF `rotate_half`); dtype of x."""
    cos, sin = (c[:, :, None, :] for c in rope_cos_sin(positions, inv_freq))  # [B, T, 1, H/2]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """mask [B, S] (nonzero = real token) -> position ids [B, S] int32 counting real tokens from 0.

    Left padding gets 0 (never attended to), padding after the last real token repeats its position.
    """
    return jnp.maximum(jnp.cumsum(mask.astype(bool), axis=1, dtype=jnp.int32) - 1, 0)


def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """x [B, T, D], w_gate/w_up [D, F], w_down [F, D] -> [B, T, D]."""
    x2 = flat_tokens(x)
    gate = jnp.einsum("MD,DF->MF", x2, w_gate)
    up = jnp.einsum("MD,DF->MF", x2, w_up)
    return jnp.einsum("MF,FD->MD", jax.nn.silu(gate) * up, w_down).reshape(x.shape[:-1] + w_down.shape[-1:])


def swiglu_fused(x: jax.Array, w_gate_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """swiglu with the gate and up weights stacked, w_gate_up [D, 2, F]: one matmul instead of two."""
    gate_up = jnp.einsum("MD,DTF->MTF", flat_tokens(x), w_gate_up)
    out = jnp.einsum("MF,FD->MD", jax.nn.silu(gate_up[:, 0]) * gate_up[:, 1], w_down)
    return out.reshape(x.shape[:-1] + w_down.shape[-1:])


def flat_tokens(x: jax.Array) -> jax.Array:
    """[B, T, ...] -> [M = B * T, ...]. Projections on flat tokens make every weight gradient a dot with one
    contracting dimension; XLA:CPU runs the two-contracting-dim form ('BTD,BTF->DF') about 2.5x slower."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


@jax.custom_vjp
def logits(h: jax.Array, w: jax.Array) -> jax.Array:
    """h [..., D] @ w [D, V] -> fp32 logits [..., V]: multiplied in h's (compute) dtype, accumulated in fp32.

    The gradients likewise: autodiff of an fp32-accumulated dot would multiply the fp32 cotangent with the bf16
    operands in fp32 (TF32 GEMMs on GPUs, the size of the head). dh comes back in h's dtype and dw in w's
    (an fp32 master head gets an fp32-accumulated gradient).
    """
    return _logits(h, w)


def _logits(h, w):
    return jnp.einsum("...D,DV->...V", h, w.astype(h.dtype), preferred_element_type=jnp.float32)


def _logits_fwd(h, w):
    return _logits(h, w), (h, w)


def logits_grads(h: jax.Array, w: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The gradients of logits(h, w) for the cotangent g [..., V]: (dh [..., D], dw [D, V]), both fp32-accumulated
    from matmuls in h's dtype. For the fused loss, which sums dw over chunks itself."""
    g = g.astype(h.dtype)
    dh = jnp.einsum("...V,DV->...D", g, w.astype(h.dtype), preferred_element_type=jnp.float32)
    h2, g2 = h.reshape(-1, h.shape[-1]), g.reshape(-1, g.shape[-1])  # one contracting dim (see flat_tokens)
    return dh, jnp.einsum("MD,MV->DV", h2, g2, preferred_element_type=jnp.float32)


def _logits_bwd(res, g):
    h, w = res
    dh, dw = logits_grads(h, w, g)
    return dh.astype(h.dtype), dw.astype(w.dtype)


logits.defvjp(_logits_fwd, _logits_bwd)
