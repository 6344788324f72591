"""Llama / Qwen2 / Qwen3 decoder, attention backends, Hugging Face load and export, sharding rules, presets."""

from flax import nnx

from tipjax.models.attention import AttentionMask, resolve_backend
from tipjax.models.cache import KVCache, LayerCache
from tipjax.models.config import ModelConfig, RopeScaling
from tipjax.models.decoder import Decoder, abstract, init, param_count, param_specs
from tipjax.models.hf import load_hf, save_hf
from tipjax.models.layers import positions_from_mask
from tipjax.models.presets import PRESETS
from tipjax.models.sharding import (
    MESH_AXES,
    SAMPLING_RULES,
    STORAGE_RULES,
    batch_sharding,
    cache_shardings,
    logical_to_spec,
    make_mesh,
    model_shardings,
    shard,
)

# tipjax uses NNX modules as plain pytrees (jax.jit / jax.grad over them); set once, here.
nnx.set_graph_mode(False)

__all__ = [
    "MESH_AXES", "PRESETS", "SAMPLING_RULES", "STORAGE_RULES", "AttentionMask", "Decoder", "KVCache", "LayerCache",
    "ModelConfig", "RopeScaling", "abstract", "batch_sharding", "cache_shardings", "init", "load_hf",
    "logical_to_spec", "make_mesh", "model_shardings", "param_count", "param_specs", "positions_from_mask",
    "resolve_backend", "save_hf", "shard",
]
