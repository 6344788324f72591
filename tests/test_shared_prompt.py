"""A prompt's n samples share one copy of its keys and values (models.PromptCache): attention over the shared
prompt then the row's own slots against a float64 restatement, in the xla path and the Pallas kernel (interpret
mode); the sampler and the trainer's rollout draw what unshared rows draw, from a prompt prefilled once."""

import functools

import jax
import jax.numpy as jnp
import jaxpr_walk
import numpy as np
import pytest
from test_decode_kernel import EPS, H, KV, case, prepared
from test_decode_paths import _HF, reference_decode

from tipjax import models, sampling
from tipjax.models import attention, decode_kernel
from tipjax.models.cache import LayerCache, PromptCache

P, N = 2, 2              # prompts, samples per prompt: B = 4 rows (test_decode_kernel's case)
SP, LENGTH = 64, 40      # prompt slots (whole blocks) and the prompt bucket: slots >= 40 are empty


def reference(q, prompt_k, prompt_v, prompt_starts, k, v, ends):
    """float64: q [B, K * G, H]; row b attends over prompt b // N's slots [prompt_starts, LENGTH) then its own
    slots [0, ends[b]): reference_decode over each row's prompt slots [0, LENGTH) followed by its own."""
    b = q.shape[0]
    prompt_of = np.arange(b) // (b // prompt_k.shape[0])
    whole = lambda pre, own: np.concatenate([np.asarray(pre, np.float64)[prompt_of, :, :LENGTH],
                                             np.asarray(own, np.float64)], axis=2)
    return reference_decode(q, whole(prompt_k, k), whole(prompt_v, v), np.asarray(prompt_starts)[prompt_of],
                            LENGTH + np.asarray(ends))


def prompt_case(seed, prompt_starts, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 2)
    pk, pv = (jax.random.normal(x, (P, KV, SP, H), dtype) for x in keys)
    mask = (jnp.arange(SP)[None] >= jnp.asarray(prompt_starts)[:, None]) & (jnp.arange(SP)[None] < LENGTH)
    return PromptCache(k=pk, v=pv, mask=mask, starts=jnp.asarray(prompt_starts, jnp.int32), length=LENGTH)


@pytest.mark.parametrize("splits", [1, 2, 3])
@pytest.mark.parametrize("index, prompt_starts", [
    (0, [0, 39]),     # the first response token: the prompt and the new slot; a one-token prompt
    (50, [5, 33]),    # prompts starting inside a block, two own blocks
    (95, [32, 0]),    # the last slot of the rows' cache
])
def test_kernel_reads_the_shared_prompt_then_the_row(splits, index, prompt_starts):
    qkv, k_cache, v_cache, norm, rope = case(2, index + splits)
    prompt = prompt_case(index, prompt_starts)
    tiling = decode_kernel.Tiling(splits=splits)
    out, k2, v2 = decode_kernel.attend(qkv, k_cache, v_cache, jnp.zeros(4, jnp.int32), jnp.int32(index), rope=rope,
                                       qk_norm=norm, eps=EPS, tiling=tiling, prompt=prompt)
    cos, sin = rope
    w = np.asarray(norm, np.float64)
    q = np.concatenate([prepared(qkv[:, kv, :2], w[:2], cos, sin) for kv in range(KV)], axis=1)
    k_ref, v_ref = np.array(k_cache, np.float64), np.array(v_cache, np.float64)
    for kv in range(KV):
        k_ref[:, kv, index] = prepared(qkv[:, kv, 2:3], w[2:], cos, sin)[:, 0]
        v_ref[:, kv, index] = np.asarray(qkv[:, kv, 3], np.float64)
    want = reference(q, prompt.k, prompt.v, np.asarray(prompt_starts), k_ref, v_ref, np.full(4, index + 1))
    np.testing.assert_allclose(k2, k_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(v2, v_ref)
    np.testing.assert_allclose(np.asarray(out).reshape(4, KV * 2, H), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decode_backend", ["xla", "pallas"])
def test_cached_attention_over_a_shared_prompt_equals_reference(decode_backend):
    """cached_attention (q, k already normed and rotated): both backends write the new slot and attend over the
    prompt then the row; the rows of one prompt differ only in their own slots."""
    b, s = 4, 64
    keys = jax.random.split(jax.random.key(2), 5)
    q = jax.random.normal(keys[0], (b, 1, 4, H))
    k_new, v_new = (jax.random.normal(x, (b, 1, KV, H)) for x in keys[1:3])
    cache_k, cache_v = (jax.random.normal(x, (b, KV, s, H)) for x in keys[3:5])
    index = 20
    mask = jnp.broadcast_to(jnp.arange(s)[None] <= index, (b, s))
    prompt = prompt_case(3, [7, 30])
    view = LayerCache(k=cache_k, v=cache_v, mask=mask, index=jnp.int32(index), starts=jnp.zeros(b, jnp.int32),
                      prompt=prompt)
    out, (k_layer, v_layer) = attention.cached_attention(q, k_new, v_new, view, decode_backend=decode_backend)
    k_ref = np.asarray(cache_k, np.float64).copy()
    v_ref = np.asarray(cache_v, np.float64).copy()
    k_ref[:, :, index], v_ref[:, :, index] = np.asarray(k_new)[:, 0], np.asarray(v_new)[:, 0]
    np.testing.assert_array_equal(k_layer, k_ref)
    want = reference(q[:, 0], prompt.k, prompt.v, np.array([7, 30]), k_ref, v_ref, np.full(b, index + 1))
    np.testing.assert_allclose(np.asarray(out)[:, 0], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decode, cache_dtype, dtype", [
    ("xla", None, "float32"), ("pallas", None, "float32"), ("xla", "float8_e4m3fn", "float32"),
    ("pallas", "float8_e4m3fn", "float32"),
    # bf16 compute: XLA:CPU of jax 0.12 had no kernel for the shared prompt's bf16 x bf16 -> f32 value product
    ("xla", None, "bfloat16")])
def test_generate_with_a_shared_prompt_draws_what_unshared_rows_draw(decode, cache_dtype, dtype):
    """num_samples = 4 over left-padded prompts, EOS stops, 3 segments: the same tokens and log-probabilities
    (to float rounding) whether the 4 rows share their prompt's keys or each prefill and store their own."""
    cfg = models.ModelConfig.from_hf_dict(_HF, decode_attention=decode, param_dtype=dtype, compute_dtype=dtype)
    model = models.init(cfg, jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 96, (3, 10)), jnp.int32)
    mask = jnp.asarray(np.arange(10)[None] >= np.array([0, 3, 9])[:, None], jnp.int32)
    kw = dict(max_new_tokens=24, temperature=1.0, eos_token_id=5, rng=jax.random.key(7), num_samples=4,
              segments=3, cache_dtype=cache_dtype)
    shared = sampling.generate(model, ids, mask, **kw)
    own = sampling.generate(model, ids, mask, share_prompt=False, **kw)
    assert shared.tokens.shape == (12, 34)
    np.testing.assert_array_equal(shared.tokens, own.tokens)
    np.testing.assert_allclose(shared.logprobs, own.logprobs, atol=1e-5)
    assert int(shared.lengths.min()) < 24 < int(shared.lengths.max()) + 1  # EOS stopped some rows, not all


def test_the_shared_prompt_is_prefilled_and_stored_once():
    """The compiled rollout's decode loop carries the prompts' keys [P, K, Tp, H] and rows' caches of response
    slots only [B, K, N, H]; the prefill's layer scan runs over the P prompts, not the B rows."""
    model = models.init(models.ModelConfig.from_hf_dict(_HF), jax.random.key(0))
    ids = jnp.ones((3, 16), jnp.int32)
    settings = sampling.DecodeSettings(prompt_len=16, max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0,
                                       eos_ids=(), pad_id=0, segments=1, prompt_samples=4)
    jaxpr = jax.make_jaxpr(lambda m, i, k: sampling._generate(m, i, i, k, settings, None))(model, ids,
                                                                                         jax.random.key(1))
    eqns = list(jaxpr_walk.equations(jaxpr))
    carried = [str(v.aval) for e in eqns if e.primitive.name == "while" for v in e.invars]
    assert carried.count("float32[3,2,16,32]") == 4 and carried.count("float32[12,2,8,32]") == 4, carried  # 2 layers, k, v
    assert not any(a.startswith("float32[12,2,24,") for a in carried)  # no row holds a prompt copy
    # the prefill's layer scan carries the hidden states [rows, Tp, D]: 3 prompts' rows
    carried_rows = [v.aval.shape[0] for e in eqns if e.primitive.name == "scan" for v in e.outvars
                    if v.aval.ndim == 3]
    assert carried_rows and set(carried_rows) == {3}, carried_rows


def test_rollout_groups_share_prompts_and_keep_the_row_order():
    """The trainer's rollout in 2 sequential groups with 4 samples per prompt: each group draws 2 samples of every
    prompt from shared keys, and the merged rows are those of unshared groups (rows.split's order)."""
    from tipjax import step as step_lib
    from tipjax.config_schema import RolloutSpec

    model = models.init(models.ModelConfig.from_hf_dict(_HF), jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 96, (2, 8)), jnp.int32)
    mask = jnp.asarray(np.arange(8)[None] >= np.array([0, 5])[:, None], jnp.int32)

    def rollout(share):
        roll = RolloutSpec(samples_per_prompt=4, max_new_tokens=12, groups=2, share_prompt=share)
        settings = type("S", (), dict(rollout=roll, sampling_shardings=None, eos_ids=(5,), split_sharding=None))
        fn = jax.jit(functools.partial(step_lib._rollout, settings))
        text = str(jax.make_jaxpr(functools.partial(step_lib._rollout, settings))(model, ids, mask, jax.random.key(3)))
        return fn(model, ids, mask, jax.random.key(3)), text

    (shared, text), (own, _) = rollout(True), rollout(False)
    assert "f32[2,2,8,32]" in text  # the shared prompt cache: 2 prompts
    np.testing.assert_array_equal(shared.tokens, own.tokens)
    np.testing.assert_allclose(shared.logprobs, own.logprobs, atol=1e-5)


def test_under_a_mesh_the_kernel_reads_each_devices_prompts():
    """Rows and prompts split alike over data x fsdp, kv heads over tensor: the shard_map'ed kernel equals the
    one-device result; prompts that do not split as their rows do are gathered, still equal."""
    from jax.sharding import NamedSharding, PartitionSpec as Spec

    qkv, k_cache, v_cache, norm, rope = case(2, 3)
    prompt = prompt_case(4, [3, 20])
    index, starts = jnp.int32(30), jnp.zeros(4, jnp.int32)
    fn = jax.jit(functools.partial(decode_kernel.attend, eps=EPS))
    want = fn(qkv, k_cache, v_cache, starts, index, rope=rope, qk_norm=norm, prompt=prompt)
    for data, fsdp in ((2, 1), (2, 2)):  # 2 prompts: split over data; over data x fsdp (4) they stay whole
        mesh = models.make_mesh(data=data, fsdp=fsdp, tensor=2)
        slab = NamedSharding(mesh, Spec(("data", "fsdp"), "tensor", None, None))
        args = [jax.device_put(x, slab) for x in (qkv, k_cache, v_cache)]
        with jax.set_mesh(mesh):
            got = fn(*args, starts, index, rope=rope, qk_norm=norm, prompt=prompt)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6, rtol=1e-6)


def test_the_kernel_with_a_shared_prompt_lowers_to_one_triton_kernel():
    """At the OPD rollout's shapes (8 prompts x 8 samples, prompt 256, 1024 new, bf16) the kernel with a shared
    prompt lowers on this CPU to one Triton call for an H200, split or not."""
    b, p, kv, s, sp, h = 64, 8, 8, 1024, 256, 128
    bf16 = jnp.bfloat16
    shapes = [((b, kv, 4, h), bf16), ((b, kv, s, h), bf16), ((b, kv, s, h), bf16), ((b,), jnp.int32),
              ((), jnp.int32), ((p, kv, sp, h), bf16), ((p, kv, sp, h), bf16), ((p, sp), jnp.bool_),
              ((p,), jnp.int32)]
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    h200 = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
    for splits in (1, 4):
        def run(qkv, k, v, starts, index, pk, pv, pmask, pstarts):
            prompt = PromptCache(k=pk, v=pv, mask=pmask, starts=pstarts, length=sp)
            return decode_kernel.attend(qkv, k, v, starts, index, interpret=False, prompt=prompt,
                                        tiling=decode_kernel.Tiling(splits=splits))

        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h200)):
            text = jax.jit(run, donate_argnums=(1, 2)).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("__gpu$xla.gpu.triton") == 1


def test_a_prompt_that_does_not_fit_the_kernel_is_an_error():
    qkv, k_cache, v_cache, _, _ = case(2, 1)
    prompt = prompt_case(1, [0, 0])
    with pytest.raises(ValueError, match="prompt slots 48"):
        decode_kernel.attend(qkv, k_cache, v_cache, jnp.zeros(4, jnp.int32), jnp.int32(3),
                             prompt=prompt.replace(k=prompt.k[:, :, :48], v=prompt.v[:, :, :48]))
    with pytest.raises(ValueError, match="rows a multiple of its prompts"):
        decode_kernel.attend(qkv[:3], k_cache[:3], v_cache[:3], jnp.zeros(3, jnp.int32), jnp.int32(3), prompt=prompt)
    assert attention.resolve_decode_backend("auto", "cuda", t=1, s=64, head_dim=32, contiguous=True, groups=2,
                                            prompt_slots=48) == "xla"
    with pytest.raises(ValueError, match="prompt slots=48"):
        attention.resolve_decode_backend("pallas", "cuda", t=1, s=64, head_dim=32, contiguous=True, groups=2,
                                         prompt_slots=48)


def test_the_decode_loop_copies_neither_the_shared_prompt_nor_the_rows_caches():
    """The compiled sampler (Qwen3-0.6B widths, 2 layers, 2 prompts x 4 samples, prompt 128, 64 new): no
    instruction of the decode loop copies the prompts' keys [2, 8, 128, 128] or a row cache [8, 8, 64, 128]."""
    import hlo_loops
    from test_decode_paths import CARRIED

    cfg = models.PRESETS["Qwen3-0.6B"].replace(param_dtype="bfloat16", compute_dtype="bfloat16", vocab_size=1024,
                                               num_layers=2)
    ids = jax.ShapeDtypeStruct((2, 128), jnp.int32)
    settings = sampling.DecodeSettings(prompt_len=128, max_new_tokens=64, temperature=1.0, top_k=0, top_p=1.0,
                                       eos_ids=(), pad_id=0, segments=1, prompt_samples=4)
    args = (models.abstract(cfg), ids, ids, jax.eval_shape(lambda: jax.random.key(0)))
    text = sampling._jit_generate.trace(*args, settings=settings, cache_dtype=None).lower().compile().as_text()
    loop = hlo_loops.loop_lines(text, CARRIED)  # the sampler's tokens [8, 128 + 64] mark the decode loop
    assert loop
    assert hlo_loops.cache_writes(loop, 2, 8, 128, 128, ops=("copy",)) == []
    assert hlo_loops.cache_writes(loop, 8, 8, 128, 64, ops=("copy",)) == []
    assert "bf16[2,8,128,128]" in "\n".join(loop)  # the loop does read the shared prompt


def test_bench_smoke_draws_the_same_tokens(tmp_path):
    """scripts/bench_shared_prompt.py --smoke: both settings run and agree token for token."""
    import bench_shared_prompt

    rows = bench_shared_prompt.main(["--smoke", f"--out={tmp_path / 'x.json'}"])
    assert [r["rows_same_tokens"] for r in rows] == [r["rows"] for r in rows] == [8]
    assert rows[0]["max_logprob_gap_before_divergence"] < 1e-5


def test_a_sharded_cache_with_a_shared_prompt_decodes_as_the_unsharded_one():
    """cache_shardings gives the prompt's leaves the rows' placement (prompts over data x fsdp, kv heads over
    tensor); a decode step on the sharded cache equals the one-device step and keeps those placements."""
    from jax.sharding import PartitionSpec as Spec

    model = models.init(models.ModelConfig.from_hf_dict(_HF), jax.random.key(0))
    prompts = jnp.asarray(np.random.default_rng(2).integers(3, 96, (2, 8)), jnp.int32)
    ones = jnp.ones((2, 8), bool)
    _, filled = model.hidden_cached(prompts, jnp.broadcast_to(jnp.arange(8), (2, 8)), model.init_cache(2, 8), ones,
                                    fresh=True)
    prompt = PromptCache(k=filled.k, v=filled.v, mask=filled.mask, starts=jnp.zeros(2, jnp.int32), length=8)
    cache = model.init_cache(4, 4).replace(prompt=prompt)
    token, pos = jnp.asarray([[5], [6], [7], [8]]), jnp.full((4, 1), 8)
    run = jax.jit(type(model).hidden_cached)
    want, _ = run(model, token, pos, cache, jnp.ones((4, 1), bool))
    mesh = models.make_mesh(data=2, fsdp=1, tensor=4)
    shardings = models.cache_shardings(cache, mesh)
    rows = shardings.k[0].spec[0]
    assert rows is not None and shardings.prompt.k[0].spec == shardings.k[0].spec  # kv heads (2) stay whole
    assert shardings.prompt.starts.spec == Spec(rows) and shardings.prompt.mask.spec == Spec(rows, None)
    got, sharded = jax.jit(type(model).hidden_cached, out_shardings=(None, shardings))(
        models.shard(model, mesh, models.SAMPLING_RULES), token, pos, jax.device_put(cache, shardings),
        jnp.ones((4, 1), bool))
    assert sharded.prompt.k[1].sharding.spec == shardings.prompt.k[1].spec
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
