"""Experiment configs: `configs/x.py[:variant]` files, command-line overrides, frozen dataclasses.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`. Every `python -m tipjax.*`
entrypoint takes `--config=configs/x.py:variant` and any number of `--config.a.b=value` overrides. The
ConfigDict is locked, so a typo in a key fails with the key's name instead of silently adding a field.
Jitted code never sees a ConfigDict: `to_dataclass` converts it at the edge into frozen (hashable)
dataclasses, checking every key and type on the way.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import ml_collections

__all__ = ["ConfigError", "load_config", "apply_overrides", "split_config_args", "to_dataclass"]


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


def _import_config_file(path: Path) -> types.ModuleType:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    name = f"_tipjax_config_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg)")
    return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py[:variant]`, locks it, then applies `a.b=v` (or `--config.a.b=v`) overrides."""
    path, _, variant = spec.partition(":")
    module = _import_config_file(Path(path))
    config = module.get_config(variant or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict, got {type(config)}")
    config.lock()
    apply_overrides(config, overrides)
    return config


def _parse_value(text: str, current: Any) -> Any:
    """A Python literal where the text is one (numbers, tuples, None, booleans); otherwise the text itself.
    Over a string, only `None` is read (it unsets an optional key such as teacher.path); the rest is text."""
    if isinstance(current, str):
        return None if text == "None" else text
    if isinstance(current, float) and text.strip().lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        return float(text)  # not literals, but floats a user may type; validation then names the key
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Sets `a.b=v` items on a locked config; unknown keys and wrong types raise ConfigError naming the key."""
    for item in overrides:
        body = item[len("--config."):] if item.startswith("--config.") else item
        key, eq, text = body.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} must look like --config.a.b=value")
        *parents, leaf = key.split(".")
        node = config
        for depth, part in enumerate(parents):
            if part not in node:
                raise ConfigError(f"unknown config key {'.'.join(parents[:depth + 1])!r} (in override {item!r})")
            node = node[part]
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or leaf not in node:
            raise ConfigError(f"unknown config key {key!r}; known here: {sorted(node.keys()) if hasattr(node, 'keys') else []}")
        current = node[leaf]
        value = _parse_value(text, current)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # Plain dicts inside a config (an HF-style `arch`) are not type-checked by ml_collections: do it here.
        if isinstance(node, dict) and current is not None and type(value) is not type(current):
            raise ConfigError(f"config key {key!r}: cannot set {value!r} ({type(value).__name__}) over "
                              f"{current!r} ({type(current).__name__})")
        try:
            node[leaf] = value
        except TypeError as err:
            raise ConfigError(f"config key {key!r}: cannot set {value!r} ({type(value).__name__}) over "
                              f"{current!r} ({type(current).__name__})") from err


def split_config_args(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Splits argv into (`--config` spec, `--config.*` overrides, the rest)."""
    spec, overrides, rest = None, [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--config."):
            overrides.append(arg)
        elif arg == "--config":
            spec = next(it, None)
        elif arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return spec, overrides, rest


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                try:
                    return _check_type(key, value, option)
                except ConfigError:
                    continue
        raise ConfigError(f"config key {key!r}: {value!r} is not a {annotation}")
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {typing.get_args(annotation)}")
        return value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"config key {key!r}: expected a tuple, got {value!r}")
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        return tuple(value)
    if dataclasses.is_dataclass(annotation):
        return to_dataclass(value, annotation, prefix=key)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(annotation, type):
        if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
            raise ConfigError(f"config key {key!r}: expected {annotation.__name__}, got {value!r}")
    return value


def to_dataclass(config: Any, cls: type, *, prefix: str = "") -> Any:
    """Builds the frozen dataclass `cls` from a ConfigDict/dict; extra keys and wrong types raise ConfigError."""
    if dataclasses.is_dataclass(config):
        return config
    data = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" under {prefix!r}" if prefix else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where}; expected some of {sorted(names)}")
    kwargs = {}
    for name in names & set(data):
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check_type(key, data[name], hints[name])
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{cls.__name__}{' at ' + prefix if prefix else ''}: {err}") from err
