"""Hugging Face folders <-> Decoder: load (sharded placement, shape checks) and atomic export.

Only config.json and *.safetensors are read (never pickle, never remote code). Names and layouts come from
hf_names.HF_NAMES; every tensor is checked against the abstract model before anything is read.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from tipjax.models import sharding as sharding_lib
from tipjax.models.config import DEFAULT_QUERY_CHUNK, ModelConfig
from tipjax.models.decoder import Decoder, param_specs
from tipjax.models.hf_names import HF_NAMES, IGNORED_SUFFIXES, hf_shape, read_slice, to_hf

INDEX_FILE = "model.safetensors.index.json"
# Files copied from the source folder on export so the result is a complete, usable checkpoint.
_ASSET_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "generation_config.json", "chat_template*")
_EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def hf_tensor_names(cfg: ModelConfig) -> dict[str, tuple[str, str]]:
    """HF tensor name -> (tipjax name, layout) for every tensor the HF checkpoint of cfg holds."""
    names = {}
    for name in param_specs(cfg):
        template, layout = HF_NAMES[name]
        layers = range(cfg.num_layers) if name.startswith("layers.") else [None]
        for i in layers:
            names[template.format(i=i)] = (name, layout)
    return names


def _layer_of(hf_name: str) -> int | None:
    m = re.match(r"model\.layers\.(\d+)\.", hf_name)
    return int(m.group(1)) if m else None


def _weight_files(path: Path) -> dict[str, Path]:
    """HF tensor name -> safetensors file, from the index when sharded."""
    index = path / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: not a safetensors index (no readable weight_map: {err})") from None
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors in {path} (only safetensors checkpoints are read)")
    found = {}
    for file in files:
        with _open(file) as f:
            found.update(dict.fromkeys(f.keys(), file))
    return found


def _open(file: Path):
    """safe_open with the file named in the error (safetensors' own message does not name it)."""
    try:
        return safe_open(file, framework="numpy")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: unreadable safetensors file, truncated or corrupt? ({err})") from None


def _floating_dtype(name: str, dtype) -> str:
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"load_hf {name}={dtype!r} is not a dtype; use e.g. 'bfloat16' or 'float32'") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"load_hf {name}={dtype.name} is not a floating dtype; use e.g. 'bfloat16' or 'float32'")
    return dtype.name


def load_hf(path, dtype=jnp.float32, *, compute_dtype=None, mesh=None, rules=sharding_lib.STORAGE_RULES,
            remat="none", attention="auto", query_chunk=DEFAULT_QUERY_CHUNK,
            decode_attention="auto") -> Decoder:
    """Loads a local HF folder (config.json + single or sharded safetensors) as a Decoder in `dtype`.

    Every tensor is read slice by slice straight into its sharding under `rules` on `mesh` (one device when
    no mesh), so a full copy never lands on one device. remat, attention, query_chunk and
    decode_attention are ModelConfig's.
    """
    dtype = _floating_dtype("dtype", dtype)
    if compute_dtype is not None:
        compute_dtype = _floating_dtype("compute_dtype", compute_dtype)
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"{config_file} not found")
    try:
        hf_config = json.loads(config_file.read_text())
    except ValueError as err:
        raise ValueError(f"{config_file}: not valid JSON ({err})") from None
    cfg = ModelConfig.from_hf_dict(hf_config, param_dtype=dtype, compute_dtype=compute_dtype, remat=remat,
                                   attention=attention, query_chunk=query_chunk,
                                   decode_attention=decode_attention, source_dir=str(path))
    files = _weight_files(path)
    expected = hf_tensor_names(cfg)
    missing = [n for n in expected if n not in files]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    # A tied checkpoint may still carry lm_head.weight; like transformers, it is unused then.
    allowed = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    extra = [n for n in files if n not in expected and n not in allowed and not n.endswith(IGNORED_SUFFIXES)]
    if extra:
        raise ValueError(f"{path}: unexpected tensor(s) {extra[:5]} for {cfg.architecture}")

    abstract_params = dict(param_specs(cfg))
    if mesh is None:
        shardings = dict.fromkeys(abstract_params, SingleDeviceSharding(jax.devices()[0]))
    else:
        shardings = {name: jax.sharding.NamedSharding(
            mesh, sharding_lib.logical_to_spec(axes, rules, shape=shape, mesh=mesh))
            for name, (shape, axes) in abstract_params.items()}

    with contextlib.ExitStack() as stack:
        handles = {file: stack.enter_context(_open(file)) for file in set(files.values())}
        by_param: dict[str, list[str]] = {}
        for hf_name, (name, layout) in expected.items():
            shape = abstract_params[name][0]
            per_layer = shape[1:] if name.startswith("layers.") else shape
            got = tuple(handles[files[hf_name]].get_slice(hf_name).get_shape())
            want = hf_shape(layout, per_layer)
            if got != want:
                raise ValueError(f"{path}: tensor {hf_name} has shape {got}, expected {want} for {cfg.architecture} "
                                 f"config (tipjax {name} {shape})")
            by_param.setdefault(name, []).append(hf_name)
        arrays = {name: _load_param(name, abstract_params[name][0], by_param[name], files, handles,
                                    shardings[name], cfg.param_dtype) for name in abstract_params}
    return Decoder(cfg, arrays)


def _load_param(name, shape, hf_names, files, handles, sharding, dtype) -> jax.Array:
    """One tipjax parameter, assembled per addressable shard from HF slices (layer by layer when stacked)."""
    layout = HF_NAMES[name][1]
    stacked = name.startswith("layers.")
    np_dtype = jnp.dtype(dtype)

    def reader(hf_name):
        tensor = handles[files[hf_name]].get_slice(hf_name)

        def read(index):
            return tensor[index]

        return read

    blocks: dict[tuple, np.ndarray] = {}  # devices holding the same block (replication) share one read

    def callback(index):
        index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape, strict=True))
        key = tuple((s.start, s.stop) for s in index)
        if key not in blocks:
            if stacked:
                block = np.stack([read_slice(layout, reader(hf_names[i]), index[1:], shape[1:])
                                  for i in range(index[0].start, index[0].stop)])
            else:
                block = read_slice(layout, reader(hf_names[0]), index, shape)
            blocks[key] = block.astype(np_dtype)
        return blocks[key]

    return jax.make_array_from_callback(shape, sharding, callback)


def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?i?B)\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r}: expected bytes (int) or e.g. '5GB', '500MB'")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    return int(float(m.group(1)) * units[m.group(2).lower()])


def save_hf(model: Decoder, out_dir, *, dtype=None, max_shard_size="5GB", source_dir=None) -> Path:
    """Writes model as a HF folder that transformers.AutoModelForCausalLM.from_pretrained loads.

    dtype: "bfloat16" | "float32" | "float16" | None (the param dtype). Safetensors are split into shards of at
    most max_shard_size (with model.safetensors.index.json when more than one). Tokenizer, chat template and
    generation files are copied from source_dir (default: the folder the model was loaded from). The folder
    is written next to out_dir and renamed into place, so a failure leaves nothing behind.
    """
    cfg = model.config
    dtype = jnp.dtype(dtype or cfg.param_dtype).name
    if dtype not in _EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r} not supported; use one of {_EXPORT_DTYPES}")
    limit = _parse_size(max_shard_size)
    source_dir = source_dir or cfg.source_dir
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    params = {name: _param(model, name) for name in param_specs(cfg)}
    tensors = hf_tensor_names(cfg)
    itemsize = jnp.dtype(dtype).itemsize
    shards: list[list[str]] = [[]]
    size = 0
    for hf_name, (name, _) in tensors.items():
        shape = params[name].shape[1:] if name.startswith("layers.") else params[name].shape
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(hf_name)
        size += nbytes

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        total = 0
        weight_map = {}
        for k, names in enumerate(shards):
            file = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            arrays = {}
            for hf_name in names:
                name, layout = tensors[hf_name]
                value = params[name][...]
                if name.startswith("layers."):
                    value = value[_layer_of(hf_name)]
                arrays[hf_name] = np.ascontiguousarray(to_hf(layout, np.asarray(jax.device_get(value)))
                                                       .astype(jnp.dtype(dtype)))
                total += arrays[hf_name].nbytes
                weight_map[hf_name] = file
            save_file(arrays, tmp / file, metadata={"format": "pt"})
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(dtype), indent=2))
        if source_dir is not None:
            for pattern in _ASSET_PATTERNS:
                for src in Path(source_dir).glob(pattern):
                    if src.is_file():
                        shutil.copy2(src, tmp / src.name)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _param(model: Decoder, name: str):
    """The nnx.Param of a param_specs name ("layers.wq" lives on model.blocks)."""
    if name.startswith("layers."):
        return getattr(model.blocks, name.removeprefix("layers."))
    return getattr(model, name)


def _replace_dir(src: Path, dst: Path) -> None:
    """Renames src onto dst; an existing dst is moved aside first and removed only after the swap."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.replace(dst, old / dst.name)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
