"""On the fake 8-device CPU mesh: parameters are sharded as the rules say, and sharding changes no numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tipjax import models

# vocab 1024 and mlp 64 divide tensor=4; kv_heads=2 does not, so it must fall back to replication.
HF = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 1024, "hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py sets jax_num_cpu_devices=8"
    return models.make_mesh(fsdp=2, tensor=4)


@jax.jit
def forward(model, ids, mask):
    return model(ids, attention_mask=mask)


def spec(param):
    return param[...].sharding.spec


def test_logical_to_spec_rules_and_fallback(mesh):
    axes = ("layers", "embed", "kv_heads", "head_dim")
    assert models.logical_to_spec(axes, models.STORAGE_RULES) == P(None, "fsdp", "tensor", None)
    assert models.logical_to_spec(axes, models.STORAGE_RULES, shape=(2, 32, 2, 8), mesh=mesh) == P(
        None, "fsdp", None, None)
    assert models.logical_to_spec(axes, models.SAMPLING_RULES, shape=(2, 32, 4, 8), mesh=mesh) == P(
        None, None, "tensor", None)
    assert models.logical_to_spec(("batch", None), models.STORAGE_RULES) == P(("data", "fsdp"), None)


def test_init_places_params_by_rules_and_forward_matches(mesh):
    cfg = models.ModelConfig.from_hf_dict(HF)
    single = models.init(cfg, jax.random.key(0))
    sharded = models.init(cfg, jax.random.key(0), mesh=mesh)
    assert spec(sharded.embed) == P("tensor", "fsdp")
    assert spec(sharded.lm_head) == P("fsdp", "tensor")
    assert spec(sharded.blocks.wq) == P(None, "fsdp", "tensor", None)
    assert spec(sharded.blocks.wk) == P(None, "fsdp", None, None)  # kv_heads=2 on tensor=4: replicated
    assert spec(sharded.blocks.bq) == P(None, "tensor", None)
    assert spec(sharded.blocks.w_down) == P(None, "tensor", "fsdp")
    assert spec(sharded.final_norm) == P(None)
    wq = sharded.blocks.wq[...]
    assert {s.data.shape for s in wq.addressable_shards} == {(2, 16, 1, 8)}
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_array_equal(a, b)

    ids = jax.random.randint(jax.random.key(1), (4, 12), 0, cfg.vocab_size)
    mask = jnp.arange(12)[None] >= jnp.array([[0], [3], [5], [11]])
    ref = forward(single, ids, mask)
    out = forward(sharded, jax.device_put(ids, models.batch_sharding(mesh)), mask)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)

    sampling = models.shard(sharded, mesh, models.SAMPLING_RULES)
    assert spec(sampling.blocks.wq) == P(None, None, "tensor", None)
    np.testing.assert_allclose(forward(sampling, ids, mask), ref, atol=1e-5, rtol=1e-5)


def test_load_hf_places_shards(mesh, tmp_path):
    cfg = models.ModelConfig.from_hf_dict({**HF, "tie_word_embeddings": True})
    models.save_hf(models.init(cfg, jax.random.key(2)), tmp_path, max_shard_size="20KB")
    single = models.load_hf(tmp_path)
    sharded = models.load_hf(tmp_path, mesh=mesh)
    shapes = {name: {s.data.shape for s in p[...].addressable_shards}
              for name, p in [("embed", sharded.embed), ("wo", sharded.blocks.wo), ("w_up", sharded.blocks.w_up),
                              ("bk", sharded.blocks.bk)]}
    assert shapes == {"embed": {(256, 16)}, "wo": {(2, 1, 8, 16)}, "w_up": {(2, 16, 16)}, "bk": {(2, 2, 8)}}
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_shardings_of_abstract_preset(mesh):
    """Real sizes by shape only: the 8B preset's shardings come from its abstract model."""
    abstract = models.abstract(models.PRESETS["Qwen3-8B"])
    shardings = models.model_shardings(abstract, mesh)
    assert shardings.blocks.w_gate.get_value().spec == P(None, "fsdp", "tensor")
    assert shardings.blocks.wk.get_value().spec == P(None, "fsdp", "tensor", None)  # 8 kv heads divide tensor=4
    assert shardings.blocks.q_norm.get_value().spec == P(None, None)


def test_abstract_with_mesh_carries_the_init_shardings(mesh):
    cfg = models.ModelConfig.from_hf_dict(HF)
    abstract = models.abstract(cfg, mesh=mesh)
    assert models.abstract(cfg).blocks.wq.get_value().sharding is None
    real = models.init(cfg, jax.random.key(0), mesh=mesh)
    for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(real), strict=True):
        assert isinstance(a, jax.ShapeDtypeStruct) and (a.shape, a.dtype) == (r.shape, r.dtype)
        assert a.sharding == r.sharding
    sampling = models.abstract(cfg, mesh=mesh, rules=models.SAMPLING_RULES)
    assert sampling.blocks.wq.get_value().sharding.spec == P(None, None, "tensor", None)
    # an AOT target: the sharded forward compiles from shapes alone
    ids = jax.ShapeDtypeStruct((4, 12), jnp.int32, sharding=models.batch_sharding(mesh))
    assert forward.lower(abstract, ids, ids).compile() is not None


def test_sharded_cache_decode_matches(mesh):
    cfg = models.ModelConfig.from_hf_dict({**HF, "num_key_value_heads": 4})
    model = models.init(cfg, jax.random.key(3))
    ids = jax.random.randint(jax.random.key(4), (4, 6), 0, cfg.vocab_size)
    pos = jnp.broadcast_to(jnp.arange(6), (4, 6))
    ones = jnp.ones((4, 6), bool)
    cache = model.init_cache(4, 8)
    shardings = models.cache_shardings(cache, mesh)
    assert shardings.k[0].spec == P(("data", "fsdp"), "tensor", None, None)
    assert shardings.mask.spec == P(("data", "fsdp"), None)
    run = jax.jit(type(model).hidden_cached, out_shardings=(None, shardings))
    h_ref, _ = run(model, ids, pos, cache, ones)
    h, sharded = run(models.shard(model, mesh, models.SAMPLING_RULES), ids, pos, jax.device_put(cache, shardings),
                     ones)
    assert all(x.sharding.spec == shardings.k[0].spec for x in sharded.k)
    np.testing.assert_allclose(h, h_ref, atol=1e-5, rtol=1e-5)
