"""The Hugging Face <-> tipjax parameter table: names and layouts, one row per parameter.

HF stores Linear weights as [out, in] with heads flattened into the out (or in) dim; tipjax keeps
'BTD,DNH->BTNH'-ready layouts. Each layout knows the HF shape of a tipjax array, converts a tipjax array to
HF, and reads the HF slice that one shard of the tipjax array needs (so loading never builds a full copy).
Shapes below are per layer; parameters under `layers.` repeat for every {i}.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# tipjax name -> (HF tensor name, layout)
HF_NAMES = {
    "embed": ("model.embed_tokens.weight", "same"),  # [V, D]
    "final_norm": ("model.norm.weight", "same"),  # [D]
    "lm_head": ("lm_head.weight", "transpose"),  # [D, V] <- [V, D]
    "layers.attn_norm": ("model.layers.{i}.input_layernorm.weight", "same"),
    "layers.wq": ("model.layers.{i}.self_attn.q_proj.weight", "in_heads"),  # [D, N, H] <- [N*H, D]
    "layers.wk": ("model.layers.{i}.self_attn.k_proj.weight", "in_heads"),  # [D, K, H] <- [K*H, D]
    "layers.wv": ("model.layers.{i}.self_attn.v_proj.weight", "in_heads"),
    "layers.wo": ("model.layers.{i}.self_attn.o_proj.weight", "out_heads"),  # [N, H, D] <- [D, N*H]
    "layers.bq": ("model.layers.{i}.self_attn.q_proj.bias", "heads"),  # [N, H] <- [N*H]
    "layers.bk": ("model.layers.{i}.self_attn.k_proj.bias", "heads"),
    "layers.bv": ("model.layers.{i}.self_attn.v_proj.bias", "heads"),
    "layers.q_norm": ("model.layers.{i}.self_attn.q_norm.weight", "same"),  # [H]
    "layers.k_norm": ("model.layers.{i}.self_attn.k_norm.weight", "same"),
    "layers.mlp_norm": ("model.layers.{i}.post_attention_layernorm.weight", "same"),
    "layers.w_gate": ("model.layers.{i}.mlp.gate_proj.weight", "transpose"),  # [D, F] <- [F, D]
    "layers.w_up": ("model.layers.{i}.mlp.up_proj.weight", "transpose"),
    "layers.w_down": ("model.layers.{i}.mlp.down_proj.weight", "transpose"),  # [F, D] <- [D, F]
}

# HF tensors that carry no parameter and are skipped on load.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

Reader = Callable[[tuple[slice, ...]], np.ndarray]  # HF-shaped slice reader (safetensors get_slice)


def hf_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF shape of a (per-layer) tipjax array of `shape`."""
    if layout == "same":
        return shape
    if layout == "transpose":
        return shape[::-1]
    if layout == "in_heads":
        d, x, h = shape
        return (x * h, d)
    if layout == "out_heads":
        x, h, d = shape
        return (d, x * h)
    if layout == "heads":
        x, h = shape
        return (x * h,)
    raise ValueError(f"unknown layout {layout!r}")


def to_hf(layout: str, x: np.ndarray) -> np.ndarray:
    """A (per-layer) tipjax array in HF layout."""
    if layout == "same":
        return x
    if layout == "transpose":
        return x.T
    if layout == "in_heads":
        return x.reshape(x.shape[0], -1).T
    if layout == "out_heads":
        return x.reshape(-1, x.shape[-1]).T
    if layout == "heads":
        return x.reshape(-1)
    raise ValueError(f"unknown layout {layout!r}")


def _heads_rows(sl_x: slice, h: int) -> slice:
    """The contiguous flattened (x*h) range covering heads sl_x."""
    return slice(sl_x.start * h, sl_x.stop * h)


def read_slice(layout: str, read: Reader, index: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """The tipjax-layout block `index` (normalised slices, step 1) of a per-layer array of `shape`,
    reading only the HF rows/columns it needs."""
    if layout == "same":
        return read(index)
    if layout == "transpose":
        return read(index[::-1]).T
    if layout == "in_heads":
        sl_d, sl_x, sl_h = index
        h = shape[2]
        block = read((_heads_rows(sl_x, h), sl_d))  # [x*H, d]
        return block.reshape(sl_x.stop - sl_x.start, h, -1)[:, sl_h].transpose(2, 0, 1)
    if layout == "out_heads":
        sl_x, sl_h, sl_d = index
        h = shape[1]
        block = read((sl_d, _heads_rows(sl_x, h)))  # [d, x*H]
        return block.reshape(block.shape[0], sl_x.stop - sl_x.start, h)[:, :, sl_h].transpose(1, 2, 0)
    if layout == "heads":
        sl_x, sl_h = index
        h = shape[1]
        return read((_heads_rows(sl_x, h),)).reshape(-1, h)[:, sl_h]
    raise ValueError(f"unknown layout {layout!r}")
