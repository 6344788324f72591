"""A tiny run's workdir laid out as the trainer writes it, without training: for export, eval and bad-input tests."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp

from tipjax import models
from tipjax.checkpoint import Checkpointer
from tipjax.config_schema import CheckpointSpec

# A one-layer Qwen3 small enough to save, restore and export in well under a second.
ARCH = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=64, hidden_size=32,
            intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
            rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2)


def write_tiny_workdir(run: Path, steps=(1, 2)) -> models.ModelConfig:
    """run/student_config.json and checkpoints of a random student at each step (the model under "params")."""
    cfg = models.ModelConfig.from_hf_dict(ARCH)
    run.mkdir(parents=True, exist_ok=True)
    (run / "student_config.json").write_text(json.dumps(cfg.to_hf_dict()))
    checkpoints = Checkpointer(run / "checkpoints", CheckpointSpec(keep=3, async_save=False))
    for step in steps:
        checkpoints.save(step, {"params": models.init(cfg, jax.random.PRNGKey(step)), "step": jnp.int32(step)},
                         {"position": step})
    checkpoints.close()
    return cfg
