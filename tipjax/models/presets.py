"""The paper's models at real size, as data: the published config.json values of each checkpoint.

PRESETS[name] is a ModelConfig (fp32 params by default; use .replace(param_dtype=..., compute_dtype=...)).
With models.abstract(PRESETS[name]) they give parameter counts and AOT compiles without any weights.
Qwen2.5 entries are the -Instruct checkpoints' values.
"""

from __future__ import annotations

from tipjax.models.config import ModelConfig

_QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "head_dim": 128,
          "num_key_value_heads": 8, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 40960,
          "bos_token_id": 151643, "eos_token_id": 151645, "use_sliding_window": False}
_QWEN25 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rope_theta": 1000000.0,
           "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "bos_token_id": 151643, "eos_token_id": 151645,
           "use_sliding_window": False}
_LLAMA31 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
            "num_key_value_heads": 8, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 131072, "bos_token_id": 128000, "tie_word_embeddings": False,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}}


def _dims(hidden, mlp, layers, heads, **rest):
    return {"hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers,
            "num_attention_heads": heads, **rest}


HF_CONFIGS = {
    "Qwen3-0.6B": {**_QWEN3, **_dims(1024, 3072, 28, 16), "tie_word_embeddings": True},
    "Qwen3-1.7B": {**_QWEN3, **_dims(2048, 6144, 28, 16), "tie_word_embeddings": True},
    "Qwen3-4B": {**_QWEN3, **_dims(2560, 9728, 36, 32), "tie_word_embeddings": True},
    "Qwen3-8B": {**_QWEN3, **_dims(4096, 12288, 36, 32), "tie_word_embeddings": False},
    "Qwen3-14B": {**_QWEN3, **_dims(5120, 17408, 40, 40), "tie_word_embeddings": False},
    "Qwen3-32B": {**_QWEN3, **_dims(5120, 25600, 64, 64), "tie_word_embeddings": False},
    "Qwen2.5-1.5B": {**_QWEN25, **_dims(1536, 8960, 28, 12, num_key_value_heads=2), "vocab_size": 151936,
                     "tie_word_embeddings": True},
    "Qwen2.5-7B": {**_QWEN25, **_dims(3584, 18944, 28, 28, num_key_value_heads=4), "vocab_size": 152064,
                   "tie_word_embeddings": False},
    "Qwen2.5-14B": {**_QWEN25, **_dims(5120, 13824, 48, 40, num_key_value_heads=8), "vocab_size": 152064,
                    "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
    "Llama-3.1-8B": {**_LLAMA31, **_dims(4096, 14336, 32, 32), "eos_token_id": 128001},
    "Llama-3.3-70B": {**_LLAMA31, **_dims(8192, 28672, 80, 64), "eos_token_id": [128001, 128008, 128009]},
}

PRESETS: dict[str, ModelConfig] = {name: ModelConfig.from_hf_dict(d) for name, d in HF_CONFIGS.items()}
