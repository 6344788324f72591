"""The decode step's fast paths: the Pallas decode kernel (interpret mode on CPU) against the xla path
(tests/test_decode_kernel.py holds its float64 reference tests); several tokens per loop iteration; the
compiled decode loop holds no copy of the KV cache and a bounded number of ops per layer."""

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxpr_walk
import numpy as np
import pytest

from tipjax import models, sampling
from tipjax.models import attention
from tipjax.models.cache import LayerCache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import hlo_loops  # noqa: E402

CARRIED = "s32[8,192]"  # the sampler's tokens [B, 128 + 64]: marks the decode loops in _compiled_decode's HLO


def reference_decode(q, k, v, starts, ends):
    """float64: q [B, N, H], heads-major k, v [B, K, S, H]; row b attends over slots [starts[b], ends[b])."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, n, h = q.shape
    g = n // k.shape[1]
    out = np.zeros_like(q)
    for r in range(b):
        for head in range(n):
            keys = k[r, head // g, starts[r]:ends[r]]
            scores = keys @ q[r, head] / np.sqrt(h)
            p = np.exp(scores - scores.max())
            out[r, head] = (p / p.sum()) @ v[r, head // g, starts[r]:ends[r]]
    return out


def test_cached_attention_pallas_equals_xla():
    """One new token per row over a left-padded cache: the kernel (starts) and the masked xla path agree."""
    b, kv, s, h = 3, 2, 128, 32
    keys = jax.random.split(jax.random.key(1), 5)
    q = jax.random.normal(keys[0], (b, 1, 4, h))
    k_new, v_new = (jax.random.normal(x, (b, 1, kv, h)) for x in keys[1:3])
    cache_k, cache_v = (jax.random.normal(x, (b, kv, s, h)) for x in keys[3:5])
    index, starts = 40, jnp.array([0, 17, 39])
    mask = (jnp.arange(s)[None] >= starts[:, None]) & (jnp.arange(s)[None] <= index)
    view = dict(k=cache_k, v=cache_v, mask=mask, index=jnp.int32(index))
    xla, (k_x, _) = attention.cached_attention(q, k_new, v_new, LayerCache(**view), decode_backend="xla")
    pallas, (k_p, _) = attention.cached_attention(q, k_new, v_new, LayerCache(**view, starts=starts),
                                                  decode_backend="pallas")
    np.testing.assert_allclose(pallas, xla, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(k_p, k_x)
    np.testing.assert_array_equal(np.asarray(k_p)[:, :, index], np.asarray(k_new)[:, 0])


@pytest.mark.parametrize("requested, platform, kw, expected", [
    ("auto", "cuda", dict(t=1, s=640, head_dim=128, contiguous=True, groups=2), "pallas"),  # measured faster
    ("auto", "cuda", dict(t=1, s=640, head_dim=128, contiguous=True, cache_bytes=1), "pallas"),  # float8: faster
    ("auto", "cuda", dict(t=1, s=576, head_dim=128, contiguous=True, cache_bytes=1), "xla"),  # not float8 blocks
    ("auto", "cuda", dict(t=1, s=640, head_dim=128, contiguous=True, cache_bytes=4), "xla"),  # fp32: not measured
    ("auto", "cuda", dict(t=1, s=640, head_dim=128, contiguous=True, groups=3), "xla"),  # not a power of two
    ("auto", "rocm", dict(t=1, s=640, head_dim=128, contiguous=True), "xla"),     # not measured
    ("auto", "cuda", dict(t=1, s=640, head_dim=128, contiguous=True, here=False), "xla"),  # Ampere, or would gather
    ("auto", "cpu", dict(t=1, s=640, head_dim=128, contiguous=True), "xla"),
    ("auto", "tpu", dict(t=1, s=640, head_dim=128, contiguous=True), "xla"),
    ("auto", "cuda", dict(t=2, s=640, head_dim=128, contiguous=True), "xla"),     # chunked prefill
    ("auto", "cuda", dict(t=1, s=600, head_dim=128, contiguous=True), "xla"),     # not whole blocks
    ("auto", "cuda", dict(t=1, s=640, head_dim=96, contiguous=True), "xla"),      # not a power of two
    ("auto", "cuda", dict(t=1, s=640, head_dim=128, contiguous=False), "xla"),    # arbitrary mask
    ("xla", "cuda", dict(t=1, s=640, head_dim=128, contiguous=True), "xla"),
    ("pallas", "cpu", dict(t=1, s=640, head_dim=128, contiguous=True), "pallas"),  # interpret mode
    ("pallas", "cuda", dict(t=1, s=640, head_dim=128, contiguous=True, groups=4), "pallas"),
    ("pallas", "rocm", dict(t=1, s=640, head_dim=128, contiguous=True), "pallas"),
    # a jax without Pallas's Triton backend (its removal is announced): "auto" decodes with xla on GPUs, and
    # interpret mode (CPU, the tests) needs no Triton
    ("auto", "cuda", dict(t=1, s=640, head_dim=128, contiguous=True, triton=False), "xla"),
    ("pallas", "cpu", dict(t=1, s=640, head_dim=128, contiguous=True, triton=False), "pallas"),
])
def test_resolve_decode_backend(requested, platform, kw, expected):
    assert attention.resolve_decode_backend(requested, platform, **kw) == expected


def test_the_kernel_suits_several_devices_only_under_a_mesh():
    """8 CPU devices here: without a mesh context XLA would gather split operands for a Triton call; a mesh
    context (even of one device, as eval sets) lets the kernel run per device under shard_map."""
    assert jax.device_count() == 8 and not attention.decode_kernel_suits_here()
    with jax.set_mesh(models.make_mesh(devices=jax.devices()[:1])):
        assert attention.decode_kernel_suits_here()
    with jax.set_mesh(models.make_mesh(data=2, tensor=4)):
        assert attention.decode_kernel_suits_here()


def test_resolve_decode_backend_errors():
    with pytest.raises(ValueError, match="decode_attention='pallas' needs"):
        attention.resolve_decode_backend("pallas", "cuda", t=1, s=600, head_dim=128, contiguous=True)
    with pytest.raises(ValueError, match="not one of"):
        attention.resolve_decode_backend("flash", "cuda", t=1, s=640, head_dim=128, contiguous=True)
    with pytest.raises(ValueError, match="Triton kernel for GPUs"):  # not interpret mode on a TPU, silently slow
        attention.resolve_decode_backend("pallas", "tpu", t=1, s=640, head_dim=128, contiguous=True)
    with pytest.raises(ValueError, match="needs Pallas's Triton backend, which jax .* no longer ships"):
        attention.resolve_decode_backend("pallas", "cuda", t=1, s=640, head_dim=128, contiguous=True, triton=False)
    with pytest.raises(ValueError, match="decode_attention must be one of"):
        models.ModelConfig.from_hf_dict(_HF, decode_attention="flash")


_HF = {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
       "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}


@pytest.mark.parametrize("arch", ["Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"])
def test_sampler_paths_agree(arch):
    """xla with 1 or 3 tokens per iteration and the Pallas kernel with 4 draw the same tokens from the same
    key (left-padded rows of different lengths, EOS stops, temperature 1) with the same log-probabilities.
    The kernel does each layer's q/k norm (Qwen3), rope, cache write and attention; Qwen2 adds q/k/v biases."""
    cfg = models.ModelConfig.from_hf_dict({**_HF, "architectures": [arch]})
    prompt = jnp.asarray(np.random.default_rng(0).integers(3, 96, (3, 7)), jnp.int32)
    mask = jnp.asarray(np.arange(7)[None] >= np.array([0, 3, 6])[:, None], jnp.int32)
    outs = {}
    for name, backend, k in [("xla1", "xla", 1), ("xla3", "xla", 3), ("pallas4", "pallas", 4)]:
        model = models.init(cfg.replace(decode_attention=backend), jax.random.key(2))
        outs[name] = sampling.generate(model, prompt, mask, max_new_tokens=10, temperature=1.0, eos_token_id=5,
                                       rng=jax.random.key(3), num_samples=2, steps_per_loop=k)
    ref = outs["xla1"]
    assert ref.tokens.shape == (6, 17)
    for name in ("xla3", "pallas4"):
        np.testing.assert_array_equal(outs[name].tokens, ref.tokens, err_msg=name)
        np.testing.assert_array_equal(outs[name].response_mask, ref.response_mask, err_msg=name)
        np.testing.assert_array_equal(outs[name].lengths, ref.lengths, err_msg=name)
        np.testing.assert_allclose(outs[name].logprobs, ref.logprobs, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("cache_dtype, default", [(None, "DEFAULT"), ("float8_e4m3fn", "DEFAULT_FLOAT8")])
def test_the_default_tiling_sizes_the_sampler_cache(monkeypatch, cache_dtype, default):
    """decode_kernel.DEFAULT (16-bit caches) and DEFAULT_FLOAT8 are what the decoder launches and what the sampler
    rounds its cache to: with blocks of 64 the kernel path still draws xla's tokens (a 9-token prompt + 6 new: a
    64-slot cache), over a float8 cache with float16 dot operands too."""
    from tipjax.models import decode_kernel

    cfg = models.ModelConfig.from_hf_dict(_HF).replace(compute_dtype="bfloat16")
    prompt = jnp.asarray(np.random.default_rng(2).integers(3, 96, (2, 9)), jnp.int32)
    mask = jnp.asarray(np.arange(9)[None] >= np.array([0, 4])[:, None], jnp.int32)
    kw = dict(max_new_tokens=6, temperature=1.0, eos_token_id=5, rng=jax.random.key(5), cache_dtype=cache_dtype)
    xla = sampling.generate(models.init(cfg.replace(decode_attention="xla"), jax.random.key(2)), prompt, mask, **kw)
    tiling = decode_kernel.Tiling(block=64, num_warps=8, num_stages=3, float8_operands="float16")
    mine, other = (2, 1) if cache_dtype is None else (1, 2)  # cache element bytes: this default's, the other's
    kept = decode_kernel.default_tiling(other).block  # the other default keeps its block
    monkeypatch.setattr(decode_kernel, default, tiling)
    assert attention.decode_cache_slots(15, "pallas", mine) == 64
    assert attention.decode_cache_slots(15, "pallas", other) == kept and attention.decode_cache_slots(15, "xla") == 15
    model = models.init(cfg.replace(decode_attention="pallas"), jax.random.key(2))
    jax.clear_caches()
    try:
        text = str(jax.make_jaxpr(lambda p, m: sampling.generate(model, p, m, **kw).tokens)(prompt, mask))
        got = sampling.generate(model, prompt, mask, **kw)
    finally:
        jax.clear_caches()
    assert "num_warps=8" in text and "num_stages=3" in text and "num_warps=4" not in text  # the default's launch
    assert bool(re.search(r"\bf16\[", text)) == (cache_dtype is not None)  # float16 dot operands over float8 only
    np.testing.assert_array_equal(got.tokens, xla.tokens)
    np.testing.assert_allclose(got.logprobs, xla.logprobs, atol=1e-2)  # bf16 compute: rounding apart


@pytest.mark.parametrize("cache_dtype", [None, "float8_e4m3fn", "float32"])
def test_auto_takes_the_kernel_on_cuda_for_16_bit_and_float8_caches(monkeypatch, cache_dtype):
    """"auto" on CUDA (the platform faked; the kernel runs in interpret mode here): the sampler decodes through
    the kernel, in one segment, and draws what xla draws, over a bf16 or a float8 cache (float16 operands); over
    an fp32 cache (not measured) it stays on xla. This process has 8 CPU devices, so the kernel needs a mesh
    context (one device here) to run per device."""
    cfg = models.ModelConfig.from_hf_dict(_HF).replace(compute_dtype="bfloat16", attention="xla")  # no cuDNN here
    prompt = jnp.asarray(np.random.default_rng(1).integers(3, 96, (2, 9)), jnp.int32)
    mask = jnp.asarray(np.arange(9)[None] >= np.array([0, 4])[:, None], jnp.int32)
    kw = dict(max_new_tokens=6, temperature=1.0, eos_token_id=5, rng=jax.random.key(4), cache_dtype=cache_dtype)
    xla = sampling.generate(models.init(cfg.replace(decode_attention="xla"), jax.random.key(2)), prompt, mask, **kw)
    model = models.init(cfg, jax.random.key(2))
    monkeypatch.setattr(attention, "current_platform", lambda: "cuda")
    jax.clear_caches()  # the sampler's compiled program for this shape must be traced again, on "cuda"
    try:
        unmeshed = str(jax.make_jaxpr(lambda p, m: sampling.generate(model, p, m, **kw).tokens)(prompt, mask))
        with jax.set_mesh(models.make_mesh(data=1, fsdp=1, tensor=1)):
            text = str(jax.make_jaxpr(lambda p, m: sampling.generate(model, p, m, **kw).tokens)(prompt, mask))
            got = sampling.generate(model, prompt, mask, **kw)
    finally:
        jax.clear_caches()
    assert "tipjax_decode_attention" not in unmeshed  # 8 devices and no mesh context: XLA would gather for it
    assert ("tipjax_decode_attention" in text) == (cache_dtype != "float32")
    np.testing.assert_array_equal(got.tokens, xla.tokens)
    np.testing.assert_allclose(got.logprobs, xla.logprobs, atol=2e-2)  # bf16 rounding of the two paths


@pytest.mark.parametrize("decode", ["xla", "pallas"])
def test_segments_and_mapped_groups_draw_the_same_samples(decode):
    """The cache grown over 3 segments samples exactly what one segment does (temperature 1, EOS stops), also
    inside lax.map, as the trainer's rollout groups run it; with the Pallas kernel too (caches of whole blocks)."""
    model = models.init(models.ModelConfig.from_hf_dict(_HF, decode_attention=decode), jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 96, (4, 8)), jnp.int32)
    mask = jnp.asarray(np.arange(8)[None] >= np.array([0, 2, 5, 7])[:, None], jnp.int32)
    kw = dict(max_new_tokens=20, temperature=1.0, eos_token_id=5)
    keys = jax.random.split(jax.random.key(1), 2)
    one = sampling.generate(model, ids, mask, rng=keys[0], segments=1, **kw)
    three = sampling.generate(model, ids, mask, rng=keys[0], segments=3, **kw)
    np.testing.assert_array_equal(three.tokens, one.tokens)
    np.testing.assert_allclose(three.logprobs, one.logprobs, atol=1e-5)
    assert 0 < int(one.lengths.min()) and int(one.lengths.max()) > 10  # rows end at different points

    def group(x):
        return sampling.generate(model, x[0], x[1], rng=x[2], buckets=(8,), segments=3, **kw).tokens

    mapped = jax.jit(lambda a, b, k: jax.lax.map(group, (a, b, k)))(ids.reshape(2, 2, 8), mask.reshape(2, 2, 8), keys)
    for i in range(2):
        direct = sampling.generate(model, ids[2 * i:2 * i + 2], mask[2 * i:2 * i + 2], rng=keys[i], segments=1, **kw)
        np.testing.assert_array_equal(mapped[i], direct.tokens)


def _decode_program(layers: int, steps_per_loop: int = 1, segments: int = 1):
    """The sampler's whole program (prefill + decode loop) for Qwen3-0.6B widths, batch 8, prompt 128, 64 new,
    lowered from abstract arrays."""
    cfg = models.PRESETS["Qwen3-0.6B"].replace(param_dtype="bfloat16", compute_dtype="bfloat16", vocab_size=1024,
                                               num_layers=layers)
    ids = jax.ShapeDtypeStruct((8, 128), jnp.int32)
    settings = sampling.DecodeSettings(prompt_len=128, max_new_tokens=64, temperature=1.0, top_k=0, top_p=1.0,
                                       eos_ids=(), pad_id=0, segments=segments, steps_per_loop=steps_per_loop)
    args = (models.abstract(cfg), ids, ids, jax.eval_shape(lambda: jax.random.key(0)))
    return sampling._jit_generate.trace(*args, settings=settings, cache_dtype=None)


def _compiled_decode(layers: int, steps_per_loop: int = 1, segments: int = 1) -> str:
    return _decode_program(layers, steps_per_loop, segments).lower().compile().as_text()


def _instructions(text: str) -> int:
    return len(re.findall(r"^\s+\S+ = ", text, re.M))


def _kernels(text: str) -> int:
    """Kernel-like instructions in the decode loop bodies (each a launch on GPU): fusions, dots, copies,
    concatenates, custom calls."""
    top = hlo_loops.top_level_lines(text, CARRIED)
    return len([line for line in top if re.search(r" (fusion|custom-call|dot|concatenate|copy)\(", line)])


def test_decode_loop_copies_no_cache_and_ops_per_layer_are_bounded():
    two, four = _compiled_decode(2), _compiled_decode(4)
    # Two segments: the cache grows between them (XLA:CPU on jax 0.11 once copied a window read per step).
    for text in (two, four, _compiled_decode(2, segments=2)):
        copies = hlo_loops.cache_writes(hlo_loops.loop_lines(text, CARRIED), 8, 8, 128, 128, ops=("copy",))
        assert copies == [], f"cache-sized copies in the decode loops: {copies}"
    # Each extra layer adds its own ops to the unrolled body; a per-layer copy or gather would add more.
    per_layer = (_instructions(four) - _instructions(two)) / 2
    assert 50 < per_layer < 560, per_layer
    # Kernels per layer on XLA:CPU: 34 (jax 0.10.2) / 33 (0.11.2) with one norm and rotation for q and k,
    # 42 / 39 when they were separate.
    kernels = (_kernels(four) - _kernels(two)) / 2
    assert kernels <= 36, kernels


def _cache_slices(jaxpr, kv_shape, min_slots: int) -> list[str]:
    """Every slice of a [B, K, S, H] cache buffer (S >= min_slots) anywhere in a jaxpr, nested loops included."""
    found = []
    for eqn in jaxpr_walk.equations(jaxpr):
        if eqn.primitive.name in ("slice", "dynamic_slice", "gather"):
            shape = getattr(eqn.invars[0].aval, "shape", ())
            if len(shape) == 4 and (shape[0], shape[1], shape[3]) == kv_shape and shape[2] >= min_slots:
                found.append(f"{eqn.primitive.name} of {shape}")
    return found


@pytest.mark.parametrize("segments", [1, 3])
def test_decode_reads_whole_cache_buffers(segments):
    """Attention never reads a window sliced out of a longer cache buffer: XLA:GPU materialised such a slice for
    every layer's keys and values at every step (a copy of the window, 1-4 ms per step at batch 64 on an H200).
    The cache grows between segments instead, so each segment's buffers are exactly its window."""
    jaxpr = _decode_program(2, segments=segments).jaxpr.jaxpr
    assert _cache_slices(jaxpr, (8, 8, 128), min_slots=128) == []
    loops = [e for e in jaxpr.eqns if e.primitive.name == "while"]
    assert len(loops) == segments
    windows = [[v.aval.shape[2] for v in e.invars if len(getattr(v.aval, "shape", ())) == 4
                and v.aval.shape[:2] == (8, 8)] for e in loops]  # the cache buffers [B, K, S, H] it carries
    expected = [128 + end for end in sampling.segment_ends(64, segments)]
    assert [set(w) for w in windows] == [{e} for e in expected]


def test_decode_loop_compiles_once_per_settings():
    cfg = models.ModelConfig.from_hf_dict(_HF)
    model = models.init(cfg, jax.random.key(2))
    prompt = jnp.ones((2, 5), jnp.int32)
    before = sampling._jit_generate._cache_size()
    for seed in range(3):
        sampling.generate(model, prompt, jnp.ones_like(prompt), max_new_tokens=6, rng=jax.random.key(seed),
                          steps_per_loop=2)
    assert sampling._jit_generate._cache_size() - before == 1
