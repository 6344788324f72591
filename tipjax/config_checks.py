"""Validation of a TrainConfig or SFTConfig: every range, enum and file, named by its config key.

Runs before any model loads or anything compiles; the first bad key raises ConfigError (or FileNotFoundError).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tipjax.config_loader import ConfigError
from tipjax.config_schema import TEACHER_SOURCES, EvalSpec, ModelSpec, SFTConfig, TrainConfig, teacher_source

_DTYPES = ("float32", "bfloat16", "float16")
_REMATS = ("none", "full", "dots")
_OVERLONG = ("skip", "truncate")


def _check(ok: bool, key: str, value: Any, want: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} {want}")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _sampling_checks(prefix: str, temperature: float, top_p: float, max_new_tokens: int) -> None:
    _check(_finite(temperature) and temperature >= 0, f"{prefix}.temperature", temperature,
           "must be a finite number >= 0 (0 is greedy)")
    _check(_finite(top_p) and 0.0 < top_p <= 1.0, f"{prefix}.top_p", top_p, "must be in (0, 1]")
    _check(max_new_tokens >= 1, f"{prefix}.max_new_tokens", max_new_tokens, "must be >= 1")


def _check_model(name: str, spec: ModelSpec, *, files: bool = True) -> None:

    if (spec.path is not None or spec.preset is not None) + (spec.arch is not None) != 1:
        raise ConfigError(f"{name}: set {name}.path (optionally with {name}.preset, checked against it), "
                          f"{name}.preset or {name}.arch")
    if files and spec.path is not None and not (Path(spec.path) / "config.json").is_file():
        raise FileNotFoundError(f"{name}.path={spec.path!r}: no config.json there (a local Hugging Face folder "
                                f"is required; hub downloads are not done)")
    for field in ("param_dtype", "compute_dtype"):
        _check(getattr(spec, field) in _DTYPES, f"{name}.{field}", getattr(spec, field), f"must be one of {_DTYPES}")
    _check(spec.remat in _REMATS, f"{name}.remat", spec.remat, f"must be one of {_REMATS}")
    _check_decode_kernel(name, spec, files=files)


def _vocab_size(spec: ModelSpec, *, files: bool) -> int | None:
    """The embedding rows of a model spec, read without loading it (arch dict, preset, config.json); None if unknown."""
    vocab = _hf_fields(spec, files=files).get("vocab_size")
    return vocab if isinstance(vocab, int) else None


def _hf_fields(spec: ModelSpec, *, files: bool) -> dict:
    """A model spec's HF config fields, read without loading it (arch dict, preset, config.json); {} if unknown."""
    import json

    hf = spec.arch
    if hf is None and spec.path is not None and files:
        try:
            hf = json.loads((Path(spec.path) / "config.json").read_text())
        except (OSError, ValueError):
            return {}  # the model loader names the folder's problem
    if hf is None and spec.preset is not None:
        from tipjax import models

        return models.PRESETS[spec.preset].to_hf_dict() if spec.preset in models.PRESETS else {}
    hf = hf or {}
    return hf.get("text_config", hf)


def _check_decode_kernel(name: str, spec: ModelSpec, *, files: bool) -> None:
    """decode_attention='pallas' on a model whose head shapes the Triton kernel cannot take, or on GPUs with a jax
    that no longer ships Pallas's Triton backend: before any loading."""
    if spec.decode_attention == "pallas":
        from tipjax.models import decode_kernel

        why = decode_kernel.missing_here() or decode_kernel_misfit(_hf_fields(spec, files=files))
        _check(why is None, f"{name}.decode_attention", spec.decode_attention, why)


def decode_kernel_misfit(hf: dict) -> str | None:
    """Why the Pallas decode kernel cannot take the heads of a model given by its HF config fields (the tail of
    a one-line error), or None; also None where the fields are unknown or malformed: the model loader names
    that, and the sampler checks the kernel's shapes again."""
    from tipjax import models
    from tipjax.models import decode_kernel

    try:  # the loader's own reading of the fields (defaults included)
        cfg = models.ModelConfig.from_hf_dict(hf.get("text_config", hf))
    except (ValueError, KeyError, TypeError):
        return None
    return decode_kernel.misfit(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)


def validate(cfg: TrainConfig, *, dry_run: bool = False, prepared: bool = False) -> None:
    """Raises ConfigError (or FileNotFoundError for paths) naming the first bad key; no model is touched.

    dry_run: the prompt file and eval sets are not needed (only shapes are compiled), so not checked.
    prepared: cfg.prepare has run; before that, the folders and files it builds are not checked.
    """
    from tipjax import selection
    from tipjax.models.cache import CACHE_DTYPES

    _check(cfg.prepare == "" or cfg.prepare.count(":") == 1, "prepare", cfg.prepare, "must be 'module:function'")
    files = prepared or not cfg.prepare
    for name in ("student", "teacher") if teacher_source(cfg) == "model" else ("student",):
        _check_model(name, getattr(cfg, name), files=files)

    d = cfg.data
    _check(d.max_prompt_length >= 1, "data.max_prompt_length", d.max_prompt_length, "must be >= 1")
    _check(d.overlong in _OVERLONG, "data.overlong", d.overlong, f"must be one of {_OVERLONG}")
    if d.source == "synthetic":
        _check(1 <= d.synthetic_min_len <= d.synthetic_max_len <= d.max_prompt_length, "data.synthetic_min_len",
               (d.synthetic_min_len, d.synthetic_max_len), "and data.synthetic_max_len need "
               "1 <= min <= max <= data.max_prompt_length")
    elif files and not dry_run and not Path(d.source).is_file():
        raise FileNotFoundError(f"data.source={d.source!r}: no such prompt file (or 'synthetic')")
    if files and d.tokenizer is not None and not Path(d.tokenizer).is_dir():
        raise FileNotFoundError(f"data.tokenizer={d.tokenizer!r}: no such folder")

    r = cfg.rollout
    _check(r.samples_per_prompt >= 1, "rollout.samples_per_prompt", r.samples_per_prompt, "must be >= 1")
    _sampling_checks("rollout", r.temperature, r.top_p, r.max_new_tokens)
    _check(r.top_k >= 0, "rollout.top_k", r.top_k, "must be >= 0 (0 disables it)")
    _check(all(e >= 0 for e in r.eos_token_id), "rollout.eos_token_id", r.eos_token_id, "must be token ids >= 0")
    vocab = _vocab_size(cfg.student, files=files)
    if vocab is not None:
        _check(all(e < vocab for e in r.eos_token_id), "rollout.eos_token_id", r.eos_token_id,
               f"must be token ids inside the student's vocabulary [0, {vocab})")
    _check(r.kv_cache_dtype in ("",) + CACHE_DTYPES, "rollout.kv_cache_dtype", r.kv_cache_dtype,
           f"must be '' (the compute dtype) or one of {', '.join(CACHE_DTYPES)}")
    _check(cfg.prompts_per_step >= 1, "prompts_per_step", cfg.prompts_per_step, "must be >= 1")
    n_rows = cfg.prompts_per_step * r.samples_per_prompt
    _check(r.groups >= 1 and n_rows % r.groups == 0, "rollout.groups", r.groups,
           f"must divide prompts_per_step * rollout.samples_per_prompt = {n_rows}")
    _check(cfg.micro_batches >= 1 and n_rows % cfg.micro_batches == 0, "micro_batches", cfg.micro_batches,
           f"must divide prompts_per_step * rollout.samples_per_prompt = {n_rows}")

    s = cfg.selection
    for key, check in (("rule", selection.rules.check_rule), ("divergence", selection.losses.check_divergence),
                       ("ratio", selection.rules.check_ratio)):
        try:
            check(getattr(s, key))
        except ValueError as err:
            raise ConfigError(f"selection.{key}: {err}") from None
    _check(_finite(s.beta) and 0.0 <= s.beta <= 1.0, "selection.beta", s.beta, "must be in [0, 1]")
    _check(s.chunk_size >= 1, "selection.chunk_size", s.chunk_size, "must be >= 1")
    try:
        selection.SelectionOptions(**s.options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"selection.options: {err}") from None

    o = cfg.optim
    _check(_finite(o.learning_rate) and o.learning_rate > 0, "optim.learning_rate", o.learning_rate, "must be > 0")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    _check(o.decay_steps >= 0, "optim.decay_steps", o.decay_steps, "must be >= 0 (0: total_steps)")
    _check(_finite(o.end_lr_factor) and 0 <= o.end_lr_factor <= 1, "optim.end_lr_factor", o.end_lr_factor,
           "must be in [0, 1]")
    _check(_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    for key in ("b1", "b2"):
        _check(_finite(getattr(o, key)) and 0 <= getattr(o, key) < 1, f"optim.{key}", getattr(o, key),
               "must be in [0, 1)")
    _check(_finite(o.eps) and o.eps > 0, "optim.eps", o.eps, "must be > 0")
    _check(_finite(o.grad_clip) and o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "must be >= 0 (0: off)")
    _check(o.max_skipped >= 1, "optim.max_skipped", o.max_skipped, "must be >= 1")

    m = cfg.mesh
    _check(m.data == -1 or m.data >= 1, "mesh.data", m.data, "must be >= 1 or -1 (all remaining devices)")
    _check(m.fsdp >= 1, "mesh.fsdp", m.fsdp, "must be >= 1")
    _check(m.tensor >= 1, "mesh.tensor", m.tensor, "must be >= 1")

    c = cfg.checkpoint
    _check(c.every >= 0, "checkpoint.every", c.every, "must be >= 0 (0: only the final step)")
    _check(c.keep >= 1, "checkpoint.keep", c.keep, "must be >= 1 (the final checkpoint is always kept)")
    _check(c.keep_period >= 0, "checkpoint.keep_period", c.keep_period, "must be >= 0")

    _check_eval(cfg.eval, files=files and not dry_run)
    _check(cfg.total_steps >= 1, "total_steps", cfg.total_steps, "must be >= 1")
    _check(cfg.log_every >= 1, "log_every", cfg.log_every, "must be >= 1")
    _check(cfg.timing_every >= 0, "timing_every", cfg.timing_every, "must be >= 0 (0: off)")
    _check_self_distillation_context_schedules_log(cfg)


def _check_self_distillation_context_schedules_log(cfg: TrainConfig) -> None:
    """The keys of teacher.source, data.teacher_*, the schedules and log.*: one line naming the key."""
    import importlib.util
    import sys

    from tipjax import schedule, teacher_context

    source = teacher_source(cfg)
    _check(source in TEACHER_SOURCES, "teacher.source", source, f"must be one of {TEACHER_SOURCES}")
    t = cfg.teacher
    if source != "model" and (t.path is not None or t.preset is not None or t.arch is not None):
        raise ConfigError(f"teacher.source={source!r} uses the student's weights; unset teacher.path, "
                          f"teacher.preset and teacher.arch")
    d = cfg.data
    _check(d.teacher_max_prompt_length >= 0, "data.teacher_max_prompt_length", d.teacher_max_prompt_length,
           "must be >= 0 (0: data.max_prompt_length)")
    context = teacher_context.from_spec(d)
    if context is not None and d.source == "synthetic":
        raise ConfigError("data.teacher_*: teacher-only context needs a prompt file (data.source), not synthetic ids")
    if d.teacher_template:
        try:
            teacher_context.template_fields(d.teacher_template)
        except teacher_context.ContextError as err:
            raise ConfigError(str(err)) from None
    s = cfg.selection
    for complaint in (schedule.check(s.ratio_schedule, "selection.ratio_schedule", 0.0, 1.0, open_low=True),
                      schedule.check(s.beta_schedule, "selection.beta_schedule", 0.0, 1.0, open_low=False)):
        if complaint:
            raise ConfigError(complaint)
    _check(cfg.optim.schedule in schedule.KINDS, "optim.schedule", cfg.optim.schedule,
           f"must be one of {schedule.KINDS}")
    log = cfg.log
    _check(log.wandb_mode in ("online", "offline"), "log.wandb_mode", log.wandb_mode, "must be online or offline")
    installed = sys.modules.get("wandb") is not None or (
        "wandb" not in sys.modules and importlib.util.find_spec("wandb") is not None)
    if log.wandb_project and not installed:
        raise ConfigError(f"log.wandb_project={log.wandb_project!r}: wandb is not installed; "
                          f"pip install -e \".[wandb]\"")


def _check_eval(e: EvalSpec, *, files: bool) -> None:
    _check(e.every >= 0, "eval.every", e.every, "must be >= 0 (0: off)")
    _sampling_checks("eval", e.temperature, e.top_p, e.max_new_tokens)
    _check(e.samples >= 1, "eval.samples", e.samples, "must be >= 1")
    _check(e.limit >= 0, "eval.limit", e.limit, "must be >= 0 (0: all)")
    _check(e.batch_size >= 1, "eval.batch_size", e.batch_size, "must be >= 1")
    _check(not e.at_start or e.datasets, "eval.at_start", e.at_start, "needs eval.datasets")
    if (e.every or e.at_start) and files:
        from tipjax import data

        missing = [d for d in e.datasets if not data.resolve_data_path(d).is_file()]
        if missing:
            raise FileNotFoundError(f"eval.datasets: not found: {missing}")
        names = [data.dataset_name(data.resolve_data_path(d)) for d in e.datasets]
        _check(len(set(names)) == len(names), "eval.datasets", e.datasets, "name one dataset twice (by file stem)")


def validate_sft(cfg: SFTConfig) -> None:
    """validate() for SFT configs: every key's range, the data source and the tokenizer, before anything loads."""

    _check_model("student", cfg.student)
    d = cfg.data
    if bool(d.task) == bool(d.source):
        raise ConfigError("data: set exactly one of data.task (a tipjax.tasks name) and data.source (a .jsonl file)")
    if d.source and not Path(d.source).is_file():
        raise FileNotFoundError(f"data.source={d.source!r}: no such file")
    _check(d.n_examples >= 1, "data.n_examples", d.n_examples, "must be >= 1")
    _check(d.max_prompt_length >= 1, "data.max_prompt_length", d.max_prompt_length, "must be >= 1")
    _check(d.max_response_length >= 2, "data.max_response_length", d.max_response_length, "must be >= 2 (eos)")
    if cfg.tokenizer is not None and not Path(cfg.tokenizer).is_dir():
        raise FileNotFoundError(f"tokenizer={cfg.tokenizer!r}: no such folder")
    if cfg.tokenizer is None and cfg.student.path is None and not d.task:
        raise ConfigError("tokenizer: a random-init student on a data file needs tokenizer=<HF folder>")
    _check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be >= 1")
    _check(cfg.micro_batches >= 1 and cfg.batch_size % cfg.micro_batches == 0, "micro_batches", cfg.micro_batches,
           f"must divide batch_size = {cfg.batch_size}")
    _check(cfg.total_steps >= 1, "total_steps", cfg.total_steps, "must be >= 1")
    _check(cfg.log_every >= 1, "log_every", cfg.log_every, "must be >= 1")
    _check(_finite(cfg.optim.learning_rate) and cfg.optim.learning_rate > 0, "optim.learning_rate",
           cfg.optim.learning_rate, "must be > 0")
    _check(cfg.checkpoint.keep >= 1, "checkpoint.keep", cfg.checkpoint.keep, "must be >= 1")
    _check_eval(cfg.eval, files=True)
