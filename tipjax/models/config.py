"""ModelConfig: the static description of a Llama / Qwen2 / Qwen3 decoder, built from HF config.json.

One frozen, hashable dataclass for all families; the family differences are flags (qkv_bias, qk_norm,
tie_word_embeddings, rope_scaling, head_dim). It is static under jit: transformers objects never enter
jitted code, only this.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax.numpy as jnp

# architecture -> (model_type, has q/k/v bias, has per-head q/k RMSNorm)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", False, False),
    "Qwen2ForCausalLM": ("qwen2", True, False),
    "Qwen3ForCausalLM": ("qwen3", False, True),
}
_MODEL_TYPES = {model_type: arch for arch, (model_type, _, _) in ARCHITECTURES.items()}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_REMAT = ("none", "full", "dots")
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "xla_sdpa", "splash")  # see attention.py
DECODE_ATTENTION_BACKENDS = ("auto", "xla", "pallas")  # see attention.py
DEFAULT_QUERY_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """llama3-type rope frequency scaling (Llama 3.1+)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def to_hf_dict(self) -> dict[str, Any]:
        return {"rope_type": "llama3", **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static decoder config. Shapes: D=hidden_size, N=num_heads, K=num_kv_heads, H=head_dim, F=mlp_dim, V, L."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: str = "none"
    # Runtime choices, not model properties: never written to config.json (see to_hf_dict).
    attention: str = "auto"  # attention backend: "auto", "xla", "cudnn", "xla_sdpa", "splash" (attention.py)
    query_chunk: int = DEFAULT_QUERY_CHUNK  # xla attention processes longer query blocks this many rows at a time
    decode_attention: str = "auto"  # one-token cache attention: "auto", "xla" or "pallas" (see attention.py)
    # Where load_hf read the model from (tokenizer files for save_hf). Not part of equality or hashing, so a
    # loaded model and one built from the same values share a tree structure and jit cache entries.
    source_dir: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unsupported architecture {self.architecture!r}; supported: {sorted(ARCHITECTURES)}")
        for name in ("param_dtype", "compute_dtype"):
            object.__setattr__(self, name, jnp.dtype(getattr(self, name)).name)
        remat = {True: "full", False: "none"}.get(self.remat, self.remat)
        if remat not in _REMAT:
            raise ValueError(f"remat must be one of {_REMAT} or a bool, got {self.remat!r}")
        object.__setattr__(self, "remat", remat)
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.decode_attention not in DECODE_ATTENTION_BACKENDS:
            raise ValueError(f"decode_attention must be one of {DECODE_ATTENTION_BACKENDS}, "
                             f"got {self.decode_attention!r}")
        if isinstance(self.query_chunk, bool) or not isinstance(self.query_chunk, numbers.Integral) \
                or self.query_chunk < 1:
            raise ValueError(f"query_chunk must be a positive int, got {self.query_chunk!r}")
        object.__setattr__(self, "query_chunk", int(self.query_chunk))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads={self.num_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_kv_heads}")

    @property
    def model_type(self) -> str:
        return ARCHITECTURES[self.architecture][0]

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], *, param_dtype=jnp.float32, compute_dtype=None,
                     remat="none", attention: str = "auto", query_chunk: int = DEFAULT_QUERY_CHUNK,
                     decode_attention: str = "auto", source_dir: str | None = None) -> ModelConfig:
        """Reads a HF config.json dict (hub format or transformers-5 format). compute_dtype defaults to param_dtype."""
        arch = _architecture(d)
        _, qkv_bias, qk_norm = ARCHITECTURES[arch]
        missing = [k for k in _REQUIRED if d.get(k) is None]
        if arch == "Qwen3ForCausalLM" and d.get("head_dim") is None:
            missing.append("head_dim")  # transformers' Qwen3 default (128) is not derivable from the other fields
        if missing:
            raise ValueError(f"config.json ({arch}) is missing required field(s): {', '.join(missing)}")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={d['hidden_act']!r} is not supported (only 'silu')")
        if d.get("use_sliding_window"):
            raise ValueError("use_sliding_window=true is not supported (sliding-window attention is not implemented)")
        for flag in ("attention_bias", "mlp_bias"):
            if arch != "Qwen2ForCausalLM" and d.get(flag):
                raise ValueError(f"{flag}=true is not supported for {arch}")
        rope = _rope(d)
        heads = d["num_attention_heads"]
        return cls(
            architecture=arch,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            rope_scaling=_rope_scaling(rope),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            initializer_range=d.get("initializer_range", 0.02),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
            param_dtype=param_dtype,
            compute_dtype=compute_dtype or param_dtype,
            remat=remat,
            attention=attention,
            query_chunk=query_chunk,
            decode_attention=decode_attention,
            source_dir=source_dir,
        )

    def to_hf_dict(self, dtype: str | None = None) -> dict[str, Any]:
        """A config.json dict that transformers (4.x hub format and 5.x) reads back to the same model."""
        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope_parameters = {**self.rope_scaling.to_hf_dict(), "rope_theta": self.rope_theta}
        dtype = dtype or self.param_dtype
        d = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else rope_parameters,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "use_cache": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": dtype,
            "dtype": dtype,
        }
        if self.architecture == "LlamaForCausalLM":
            d.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        else:
            d.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
        if self.architecture == "Qwen3ForCausalLM":
            d["attention_bias"] = False
        return d


def _architecture(d: dict[str, Any]) -> str:
    archs = d.get("architectures") or []
    if archs:
        if len(archs) != 1 or archs[0] not in ARCHITECTURES:
            raise ValueError(f"unsupported architecture {archs!r} in config.json; supported: {sorted(ARCHITECTURES)}")
        return archs[0]
    model_type = d.get("model_type")
    if model_type is None:
        raise ValueError("config.json is missing required field(s): architectures (or model_type)")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"unsupported model_type {model_type!r} in config.json; supported: {sorted(_MODEL_TYPES)}")
    return _MODEL_TYPES[model_type]


def _rope(d: dict[str, Any]) -> dict[str, Any]:
    """Merges the hub format (rope_theta / rope_scaling at top level) and transformers-5 rope_parameters."""
    rope = dict(d.get("rope_scaling") or {})
    rope.update(d.get("rope_parameters") or {})
    if "rope_theta" in d and "rope_theta" not in rope:
        rope["rope_theta"] = d["rope_theta"]
    return rope


def _rope_scaling(rope: dict[str, Any]) -> RopeScaling | None:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(f"unsupported rope scaling type {kind!r} (supported: default, llama3)")
    fields = [f.name for f in dataclasses.fields(RopeScaling)]
    missing = [f for f in fields if f not in rope]
    if missing:
        raise ValueError(f"config.json llama3 rope scaling is missing field(s): {', '.join(missing)}")
    return RopeScaling(float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                       int(rope["original_max_position_embeddings"]))
