"""layers.logits (the lm head, Decoder.logits and the selection loss's projection): fp32 logits and gradients
from matmuls in the compute dtype, against autodiff and a float64 numpy restatement."""

import jax
import jax.numpy as jnp
import jaxpr_walk
import numpy as np

from tipjax.models import layers


def _inputs(dtype):
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((2, 5, 16)), dtype)
    w = jnp.asarray(rng.standard_normal((16, 40)) / 4, jnp.float32)  # an fp32 master head
    g = jnp.asarray(rng.standard_normal((2, 5, 40)), jnp.float32)
    return h, w, g


def test_fp32_value_and_gradients_equal_autodiff():
    h, w, g = _inputs(jnp.float32)
    out, vjp = jax.vjp(layers.logits, h, w)
    want, want_vjp = jax.vjp(lambda h, w: jnp.einsum("btd,dv->btv", h, w), h, w)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    for got, ref in zip(vjp(g), want_vjp(g)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_bf16_hidden_with_fp32_head_multiplies_in_bf16_and_accumulates_in_fp32():
    h, w, g = _inputs(jnp.bfloat16)
    out, vjp = jax.vjp(layers.logits, h, w)
    dh, dw = vjp(g)
    assert out.dtype == jnp.float32 and dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    # float64 restatement: operands rounded to bf16 (the head and the cotangent too), exact products summed.
    h64 = np.asarray(h, np.float64)
    w16 = np.asarray(w.astype(jnp.bfloat16), np.float64)
    g16 = np.asarray(g.astype(jnp.bfloat16), np.float64)
    np.testing.assert_allclose(out, h64 @ w16, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.einsum("btd,btv->dv", h64, g16), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dh, np.float64), g16 @ w16.T, rtol=1e-2, atol=1e-2)
    # No matmul of the forward or the two of the backward runs in fp32.
    jaxpr = jax.make_jaxpr(lambda h, w: jax.vjp(layers.logits, h, w)[1](g))(h, w)
    dots = [e for e in jaxpr_walk.equations(jaxpr) if e.primitive.name == "dot_general"]
    assert len(dots) == 3 and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
