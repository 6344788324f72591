"""ModelConfig from HF config.json dicts (both formats), presets' parameter counts, clear errors."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
import transformers

from tipjax import models

LLAMA_HUB = {  # hub format: rope_theta / rope_scaling at top level, torch_dtype
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 500, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16", "bos_token_id": 1,
    "max_position_embeddings": 131072,
    "eos_token_id": [2, 3], "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}

PUBLISHED = {"Qwen3-8B": 8.19e9, "Llama-3.1-8B": 8.03e9, "Qwen3-4B": 4.02e9, "Qwen2.5-1.5B": 1.54e9,
             "Llama-3.3-70B": 70.6e9, "Qwen3-0.6B": 0.596e9, "Qwen3-1.7B": 1.72e9, "Qwen3-14B": 14.8e9,
             "Qwen3-32B": 32.8e9, "Qwen2.5-7B": 7.62e9, "Qwen2.5-14B": 14.77e9}


def test_hub_and_transformers5_formats_agree():
    hub = models.ModelConfig.from_hf_dict(LLAMA_HUB)
    t5 = transformers.LlamaConfig(**{k: v for k, v in LLAMA_HUB.items() if k not in ("architectures", "model_type")})
    t5_dict = {**t5.to_dict(), "architectures": ["LlamaForCausalLM"]}
    assert "rope_parameters" in t5_dict and "rope_theta" not in t5_dict
    assert models.ModelConfig.from_hf_dict(t5_dict) == hub
    assert hub.rope_scaling == models.RopeScaling(8.0, 1.0, 4.0, 8192)
    assert hub.head_dim == 8 and hub.num_kv_heads == 2 and hub.eos_token_id == (2, 3)
    assert hash(hub) == hash(models.ModelConfig.from_hf_dict(t5_dict))  # usable as a static jit argument


@pytest.mark.parametrize("name", ["Qwen3-8B", "Qwen2.5-7B", "Llama-3.1-8B", "Qwen2.5-1.5B"])
def test_to_hf_dict_round_trips_through_transformers(name):
    cfg = models.PRESETS[name]
    d = cfg.to_hf_dict()
    assert models.ModelConfig.from_hf_dict(d) == cfg
    hf = transformers.AutoConfig.for_model(d["model_type"], **{k: v for k, v in d.items() if k != "model_type"})
    assert models.ModelConfig.from_hf_dict({**hf.to_dict(), "architectures": d["architectures"]}) == cfg


def test_dtypes_and_remat_flags():
    cfg = models.ModelConfig.from_hf_dict(LLAMA_HUB, param_dtype=jnp.bfloat16, remat=True)
    assert (cfg.param_dtype, cfg.compute_dtype, cfg.remat) == ("bfloat16", "bfloat16", "full")
    cfg = models.ModelConfig.from_hf_dict(LLAMA_HUB, compute_dtype="bfloat16")
    assert (cfg.param_dtype, cfg.compute_dtype) == ("float32", "bfloat16")
    with pytest.raises(ValueError, match="remat"):
        cfg.replace(remat="sometimes")


def test_remat_does_not_change_values_or_grads():
    cfg = models.ModelConfig.from_hf_dict(LLAMA_HUB).replace(vocab_size=64, hidden_size=32, num_heads=4,
                                                             num_kv_heads=2)
    ids = jnp.arange(16).reshape(2, 8) % 64

    def loss(model):
        return jnp.mean(model(ids) ** 2)

    results = [jax.jit(jax.value_and_grad(loss))(models.init(cfg.replace(remat=r), jax.random.key(0)))
               for r in ("none", "dots")]
    for value, grads in results[1:]:
        assert jnp.allclose(value, results[0][0], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(results[0][1]), strict=True):
            assert jnp.allclose(a, b, rtol=1e-5, atol=1e-7)


def formula_count(d):
    """Parameters from config.json values, written out independently of tipjax's param specs."""
    hidden, mlp, layers = d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"]
    heads, kv = d["num_attention_heads"], d.get("num_key_value_heads", d["num_attention_heads"])
    head_dim = d.get("head_dim", hidden // heads)
    qkv_out = (heads + 2 * kv) * head_dim
    attention = hidden * qkv_out + heads * head_dim * hidden
    if d["architectures"] == ["Qwen2ForCausalLM"]:
        attention += qkv_out  # q/k/v biases
    if d["architectures"] == ["Qwen3ForCausalLM"]:
        attention += 2 * head_dim  # q_norm, k_norm
    per_layer = attention + 3 * hidden * mlp + 2 * hidden
    embeddings = d["vocab_size"] * hidden * (1 if d["tie_word_embeddings"] else 2)
    return layers * per_layer + embeddings + hidden


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_param_counts(name):
    abstract = models.abstract(models.PRESETS[name])
    count = models.param_count(abstract)
    assert count == formula_count(models.presets.HF_CONFIGS[name])
    assert abs(count / PUBLISHED[name] - 1) < 0.005, f"{name}: {count / 1e9:.3f}B"
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))


@pytest.mark.parametrize("edit, message", [
    ({"architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel"),
    ({"architectures": None, "model_type": "mistral"}, "mistral"),
    ({"hidden_size": None}, "hidden_size"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_bad_configs_name_the_field(edit, message):
    with pytest.raises(ValueError, match=message):
        models.ModelConfig.from_hf_dict({**LLAMA_HUB, **edit})


def test_qwen_specific_errors():
    qwen2 = {**models.presets.HF_CONFIGS["Qwen2.5-1.5B"], "use_sliding_window": True}
    with pytest.raises(ValueError, match="use_sliding_window"):
        models.ModelConfig.from_hf_dict(qwen2)
    qwen3 = {k: v for k, v in models.presets.HF_CONFIGS["Qwen3-8B"].items() if k != "head_dim"}
    with pytest.raises(ValueError, match="head_dim"):
        models.ModelConfig.from_hf_dict(qwen3)


def test_config_is_static_metadata_not_a_leaf():
    cfg = models.PRESETS["Qwen3-0.6B"]
    abstract = models.abstract(cfg)
    assert abstract.config is cfg or abstract.config == cfg
    assert not any(isinstance(x, models.ModelConfig) for x in jax.tree.leaves(abstract))
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.vocab_size = 1


def test_attention_settings_are_validated_and_stay_out_of_config_json():
    cfg = models.ModelConfig.from_hf_dict(LLAMA_HUB, attention="xla_sdpa", query_chunk=256)
    assert (cfg.attention, cfg.query_chunk) == ("xla_sdpa", 256)
    default = models.ModelConfig.from_hf_dict(LLAMA_HUB)
    assert (default.attention, default.query_chunk) == ("auto", 1024)
    assert cfg != default and hash(cfg.replace(attention="auto", query_chunk=1024)) == hash(default)
    d = cfg.to_hf_dict()
    assert not {"attention", "query_chunk"} & set(d)
    # a runtime choice, not a model property: config.json reads back to the defaults, through transformers too
    assert models.ModelConfig.from_hf_dict(d) == default
    hf = transformers.AutoConfig.for_model(d["model_type"], **{k: v for k, v in d.items() if k != "model_type"})
    assert models.ModelConfig.from_hf_dict({**hf.to_dict(), "architectures": d["architectures"]}) == default
    with pytest.raises(ValueError, match="attention must be one of"):
        cfg.replace(attention="flash")
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="query_chunk"):
            cfg.replace(query_chunk=bad)
