"""The attention half of one decode layer, alone: tipjax's Pallas kernel at several tilings against the xla path.

    python scripts/bench_decode_kernel.py [--smoke]

Both sides start from the stacked q/k/v matmul's output [B, K, G + 2, H] (Qwen3-0.6B's 8 kv heads x (2 + 2) x
128, bf16) and end with the attention output and the key/value written into a [B, K, S, H] cache (bf16, then
float8_e4m3fn) of S = 1280 slots with 1024 filled (the OPD rollout's last segment): the xla path as the decoder
runs it (q/k norm, rope, two in-place cache writes, scores, softmax, values: eight kernels on an H200) and the
kernel (one launch). Each is timed inside one jitted `fori_loop` of 28 x 64 calls (a step's layers, many steps),
each call feeding the next, so launch gaps count as they do in the sampler; then one call of each is compared
with the xla path's (output and written key, max |difference|: bf16 rounding, ~1e-2, is expected). Also the
"kernel" row of scripts/bench_accelerator.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

# (block, num_warps, num_stages, splits (0: auto_splits), float8 dot operands, transposed): the default, wider
# blocks, deeper pipelining, transposed dots (run G: fixed splits lost to auto at batch 8 and tied at 64).
TILINGS = ((32, 4, 2, 0, "", False), (64, 4, 2, 0, "", False), (128, 4, 3, 0, "", False),
           (32, 4, 2, 0, "", True), (64, 4, 2, 0, "", True), (128, 4, 3, 0, "", True))
# Over a float8 cache (run I): float16 operands and more bytes in flight (block 128, 3 stages: DEFAULT_FLOAT8)
# took the attention half from 101.5 to 56.1 us at batch 64, still 2.4 TB/s against the bf16 kernel's 3.5. Next:
# transposed dots (the converted keys as a wgmma's register operand), 4 stages, blocks of 256.
TILINGS_FLOAT8 = ((128, 4, 3, 0, "float16", False), (32, 4, 2, 0, "", False), (64, 4, 3, 0, "float16", False),
                  (128, 4, 4, 0, "float16", False), (256, 4, 3, 0, "float16", False),
                  (256, 8, 3, 0, "float16", False), (64, 4, 3, 0, "float16", True),
                  (128, 4, 3, 0, "float16", True), (128, 4, 4, 0, "float16", True),
                  (128, 8, 3, 0, "float16", True))

def run(smoke: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from tipjax.models import attention, decode_kernel, decoder
    from tipjax.models import layers as ops
    from tipjax.models.cache import LayerCache, to_cache

    kv, g, h = (2, 2, 32) if smoke else (8, 2, 128)
    s, index = (128, 100) if smoke else (1280, 1024)
    calls = 8 if smoke else 28 * 64
    eps, inv_freq = 1e-6, ops.rope_frequencies(h, 1e6, None)
    rows = []
    cases = [(b, cache, tilings) for cache, tilings in (("bfloat16", TILINGS), ("float8_e4m3fn", TILINGS_FLOAT8))
             for b in ((2,) if smoke else (8, 64))]
    for b, cache_dtype, tilings in cases:
        keys = jax.random.split(jax.random.key(b), 4)
        qkv = jax.random.normal(keys[0], (b, kv, g + 2, h), jnp.bfloat16)
        k_cache, v_cache = (to_cache(jax.random.normal(x, (b, kv, s, h), jnp.bfloat16), cache_dtype)
                            for x in keys[1:3])
        norm = (1 + 0.1 * jax.random.normal(keys[3], (g + 1, h))).astype(jnp.bfloat16)
        starts = jnp.zeros((b,), jnp.int32)
        positions = jnp.full((b,), index, jnp.int32)
        mask = jnp.broadcast_to(jnp.arange(s)[None] <= index, (b, s))

        def xla(qkv, kc, vc):  # the decoder's own xla path: split_qkv, then cached_attention
            q, k, v = decoder.split_qkv(qkv, positions[:, None], inv_freq, qk_norm=norm, eps=eps)
            cache = LayerCache(k=kc, v=vc, mask=mask, index=jnp.int32(index))
            out, (kc, vc) = attention.cached_attention(q, k, v, cache, decode_backend="xla")
            return out.reshape(b, kv, g, h), kc, vc

        def kernel(tiling, qkv, kc, vc):
            return decode_kernel.attend(qkv, kc, vc, starts, jnp.int32(index),
                                        rope=ops.rope_cos_sin(positions, inv_freq), qk_norm=norm, eps=eps,
                                        tiling=tiling)

        variants = [("xla path (8 kernels)", None, xla)] + [
            (f"kernel block {t[0]}, {t[1]} warps, {t[2]} stages, {t[3] or 'auto'} splits"
             + (f", {t[4]} operands" if t[4] else "") + (", transposed" if t[5] else ""), list(t),
             functools.partial(kernel, decode_kernel.Tiling(*t)))
            for t in (tilings[:1] + tilings[-1:] if smoke else tilings)]
        want = None
        for name, tiling, fn in variants:
            row = dict(variant=name, batch=b, cache=cache_dtype, tiling=tiling,
                       **_time(fn, qkv, k_cache, v_cache, calls))
            try:  # the compiled kernel against the xla path, one call: output and the written cache slot
                got = jax.jit(fn)(qkv, k_cache.copy(), v_cache.copy())
                got = (got[0].astype(jnp.float32), got[1][:, :, index].astype(jnp.float32))
                want = got if want is None else want
                row["max_abs_diff_vs_xla"] = max(float(jnp.max(jnp.abs(a - w))) for a, w in zip(got, want))
            except Exception as err:  # noqa: BLE001
                row["check_error"] = f"{type(err).__name__}: {err}"[-300:]
            rows.append(row)
            print(rows[-1], flush=True)
    return dict(rows=rows, slots=s, filled=index, kv_heads=kv, groups=g, head_dim=h, calls=calls)


def _time(fn, qkv, k_cache, v_cache, calls: int) -> dict:
    import jax

    @functools.partial(jax.jit, donate_argnums=(1, 2))
    def loop(qkv, kc, vc):
        def body(_, carry):
            x, kc, vc = carry
            out, kc, vc = fn(x, kc, vc)
            return x.at[:, :, 0].add(out[:, :, 0] * 1e-3), kc, vc  # each call feeds the next
        return jax.lax.fori_loop(0, calls, body, (qkv, kc, vc))

    try:
        t0 = time.perf_counter()
        state = jax.block_until_ready(loop(qkv, k_cache.copy(), v_cache.copy()))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(loop(*state))
        seconds = time.perf_counter() - t0
    except Exception as err:  # a tiling Triton rejects must not cost the others
        return dict(error=f"{type(err).__name__}: {err}"[-600:])
    return dict(us_per_call=seconds / calls * 1e6, compile_and_first_s=compile_s)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (interpret mode)")
    a = p.parse_args()
    if a.smoke:
        import jax
        jax.config.update("jax_platforms", "cpu")
    print(json.dumps(run(a.smoke), indent=1))


if __name__ == "__main__":
    main()
