"""Logits parity with transformers' PyTorch models, HF export round trips, and bad checkpoints."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from tipjax import models
from tipjax.models import hf as hf_lib

VOCAB = 997  # odd, so no dimension happens to divide anything
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}

FAMILIES = {
    # GQA, untied, head_dim (16) != hidden / heads (12)
    "qwen3": (transformers.Qwen3Config, {"head_dim": 16, "tie_word_embeddings": False}),
    # q/k/v bias, tied embeddings
    "qwen2_tied": (transformers.Qwen2Config, {"tie_word_embeddings": True}),
    # llama3 rope scaling with a 16-token original context, evaluated over 64 positions
    "llama3": (transformers.LlamaConfig, {"head_dim": 16, "rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
    "llama_mha_tied": (transformers.LlamaConfig, {"num_key_value_heads": 4, "tie_word_embeddings": True}),
}


def hf_model(family, **overrides):
    """A tiny transformers model with every parameter (norms and biases too) randomised."""
    config_cls, extra = FAMILIES[family]
    kwargs = {"vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, **extra, **overrides}
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def save_hf_model(model, path, **kwargs):
    model.save_pretrained(path, **kwargs)
    return path


def torch_logits(model, ids, mask=None, positions=None):
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask),
                    position_ids=None if positions is None else torch.tensor(positions))
    return out.logits.float().numpy()


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def tokens(batch, length, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
    ref_model = hf_model(family)
    model = models.load_hf(save_hf_model(ref_model, tmp_path))
    ids = tokens(2, 64)
    err = rel_err(model(jnp.asarray(ids)), torch_logits(ref_model, ids))
    assert err <= 1e-4, f"{family}: relative max error {err:.2e}"


def test_padded_batch_matches_transformers(tmp_path):
    ref_model = hf_model("qwen2_tied")
    model = models.load_hf(save_hf_model(ref_model, tmp_path))
    ids = tokens(3, 20, seed=1)
    lengths = np.array([20, 13, 5])
    mask = (np.arange(20)[None] >= 20 - lengths[:, None]).astype(np.int32)  # left padding
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    ours = np.asarray(model(jnp.asarray(ids), positions=jnp.asarray(positions), attention_mask=jnp.asarray(mask)))
    ref = torch_logits(ref_model, ids, mask, positions)
    real = mask.astype(bool)
    assert np.isfinite(ours).all()
    assert rel_err(ours[real], ref[real]) <= 1e-4


def test_sharded_checkpoint_and_hidden_head(tmp_path):
    ref_model = hf_model("qwen3")
    path = save_hf_model(ref_model, tmp_path, max_shard_size="40KB")
    assert (tmp_path / hf_lib.INDEX_FILE).exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    model = models.load_hf(path)
    ids = tokens(2, 16)
    h = model.hidden(jnp.asarray(ids))
    assert h.shape == (2, 16, 48) and model.head().shape == (48, VOCAB)
    assert rel_err(model.logits(h), torch_logits(ref_model, ids)) <= 1e-4


@pytest.mark.parametrize("family", ["qwen3", "qwen2_tied", "llama3"])
def test_export_round_trip(family, tmp_path):
    ref_model = hf_model(family)
    model = models.load_hf(save_hf_model(ref_model, tmp_path / "src"))
    (tmp_path / "src" / "tokenizer_config.json").write_text("{}")
    out = models.save_hf(model, tmp_path / "out", max_shard_size="30KB")
    assert (out / hf_lib.INDEX_FILE).exists()
    assert (out / "tokenizer_config.json").exists()  # copied from the folder the model came from
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [model.config.architecture]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tokens(2, 32)
    assert rel_err(torch_logits(reloaded, ids), torch_logits(ref_model, ids)) <= 1e-5
    assert models.load_hf(out).config == model.config


def test_bf16_export_and_load(tmp_path):
    ref_model = hf_model("qwen3")
    model = models.load_hf(save_hf_model(ref_model, tmp_path / "src"))
    out = models.save_hf(model, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
    ids = tokens(2, 16)
    ours = models.load_hf(out, jnp.bfloat16, compute_dtype=jnp.float32)
    # same bf16 weights on both sides; fp32 compute on ours vs bf16 compute in torch
    assert rel_err(ours(jnp.asarray(ids)), torch_logits(reloaded, ids)) <= 5e-2
    assert rel_err(ours(jnp.asarray(ids)), torch_logits(ref_model, ids)) <= 5e-2


def _rewrite(path, edit):
    file = path / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    save_hf_model(hf_model("qwen3"), tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(ValueError, match=r"missing tensor.*model\.layers\.1\.self_attn\.k_norm\.weight"):
        models.load_hf(tmp_path)


def test_wrong_shape_is_named(tmp_path):
    save_hf_model(hf_model("qwen3"), tmp_path)

    def shrink(t):
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:-1]

    _rewrite(tmp_path, shrink)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*\(79, 48\).*\(80, 48\)"):
        models.load_hf(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    save_hf_model(hf_model("llama3"), tmp_path)

    def add(t):
        t["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)  # ignored

    _rewrite(tmp_path, add)
    with pytest.raises(ValueError, match=r"unexpected tensor.*q_norm") as err:
        models.load_hf(tmp_path)
    assert "inv_freq" not in str(err.value)


def test_unsupported_architecture_and_missing_field(tmp_path):
    path = save_hf_model(hf_model("qwen3"), tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ValueError, match="MistralForCausalLM"):
        models.load_hf(path)
    del config["num_hidden_layers"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        models.load_hf(path)


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model = models.load_hf(save_hf_model(hf_model("qwen3"), tmp_path / "src"))
    out = models.save_hf(model, tmp_path / "out")
    before = sorted(os.listdir(out))
    calls = []

    def failing_save(tensors, file, metadata=None):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        save_file(tensors, file, metadata=metadata)

    monkeypatch.setattr(hf_lib, "save_file", failing_save)
    for target in (tmp_path / "out", tmp_path / "new"):
        with pytest.raises(OSError, match="disk full"):
            models.save_hf(model, target, max_shard_size="30KB")
        calls.clear()
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(out)) == before  # the previous export is untouched
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # no temp folders left behind


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="int8"), "load_hf dtype=int8 is not a floating dtype"),
    (dict(dtype=jnp.bool_), "load_hf dtype=bool is not a floating dtype"),
    (dict(compute_dtype="int32"), "load_hf compute_dtype=int32"),
    (dict(dtype="float33"), "load_hf dtype='float33' is not a dtype"),
])
def test_non_floating_dtype_is_named(tmp_path, kwargs, message):
    save_hf_model(hf_model("qwen3"), tmp_path)
    with pytest.raises(ValueError, match=message):
        models.load_hf(tmp_path, **kwargs)


@pytest.mark.parametrize("keep", [0.5, 0.999, 12])
def test_truncated_safetensors_is_named(tmp_path, keep):
    """Cut mid-data, one byte short, and inside the header: the error names the file, for one file and shards."""
    for name, kwargs in [("single", {}), ("sharded", {"max_shard_size": "40KB"})]:
        path = save_hf_model(hf_model("qwen3"), tmp_path / name, **kwargs)
        file = sorted(path.glob("*.safetensors"))[-1]
        data = file.read_bytes()
        file.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
        with pytest.raises(ValueError, match=rf"{file.name}: unreadable safetensors file") as err:
            models.load_hf(path)
        assert "\n" not in str(err.value)


def test_attention_settings_pass_through_and_stay_out_of_export(tmp_path):
    ref_model = hf_model("qwen3")
    model = models.load_hf(save_hf_model(ref_model, tmp_path / "src"), attention="xla_sdpa", query_chunk=8)
    assert (model.config.attention, model.config.query_chunk) == ("xla_sdpa", 8)
    ids = tokens(2, 20)
    assert rel_err(model(jnp.asarray(ids)), torch_logits(ref_model, ids)) <= 1e-4
    out = models.save_hf(model, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert not {"attention", "query_chunk"} & set(config)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert rel_err(torch_logits(reloaded, ids), torch_logits(ref_model, ids)) <= 1e-5
