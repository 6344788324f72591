"""The frozen dataclasses a training run sees; `configs/*.py` ConfigDicts are converted into these at start-up.

Every field here is a config key: `--config.selection.ratio=0.2` sets `TrainConfig.selection.ratio`.
Defaults follow the paper (PAPER.md section 5, Table 9) and, where the paper is silent, PAPER.md section 12.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import ml_collections

# variant -> (rule, retention ratio): the rows of the paper's Tables 3-8, the same in every config file.
VARIANTS = {
    "all": ("all", 1.0),
    "entropy50": ("entropy_sample", 0.5),
    "entropy20": ("entropy_sample", 0.2),
    "entropy10": ("entropy_sample", 0.1),
    "soft_or50": ("soft_or", 0.5),
    "soft_or20": ("soft_or", 0.2),
    "soft_or_bottom50": ("soft_or_bottom", 0.5),
    "q3_10": ("q3", 0.1),
    "q3_20": ("q3", 0.2),
    "div50": ("div", 0.5),
    "div10": ("div", 0.1),
    "random50": ("random", 0.5),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: a local Hugging Face folder, a named preset (random init), or an HF-style dict."""

    path: str | None = None          # local HF folder (config.json + safetensors)
    preset: str | None = None        # models.PRESETS name: random weights of a published shape (dry runs, benchmarks)
    arch: dict | None = None         # HF config.json-style dict for a random model (tests, tiny runs)
    init_seed: int = 0
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: str = "none"              # per-layer rematerialisation: none | full | dots


@dataclasses.dataclass(frozen=True)
class DataSpec:
    source: str = "synthetic"        # "synthetic" (random prompt ids, CPU demos) or a .jsonl/.parquet prompt file
    tokenizer: str | None = None     # HF folder with the tokenizer; default the student's path
    prompt_field: str | None = None
    answer_field: str = "answer"
    suffix: str = "Let's think step by step and output the final answer within \\boxed{}."
    enable_thinking: bool | None = None
    max_prompt_len: int = 2048       # prompts are left padded to exactly this bucket
    over_long: str = "skip"          # skip | truncate
    seed: int = 42
    synthetic_min_len: int = 4       # synthetic prompts: lengths uniform in [min, max]
    synthetic_max_len: int = 16


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    samples_per_prompt: int = 16
    max_new_tokens: int = 8192
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    eos_token_id: tuple[int, ...] = ()   # default: the student's config eos ids
    groups: int = 1                  # sample the batch in this many sequential row groups: KV cache / groups


@dataclasses.dataclass(frozen=True)
class SelectionSpec:
    rule: str = "all"                # all random entropy_sample entropy_topk soft_or soft_or_bottom q3 div
    ratio: float = 1.0
    divergence: str = "rkl"          # rkl | fkl | jsd
    beta: float = 0.5                # jsd mixture weight
    chunk_size: int = 512
    options: dict = dataclasses.field(default_factory=dict)  # selection.SelectionOptions fields


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    learning_rate: float = 1e-6
    warmup_steps: int = 0
    decay_steps: int = 0             # cosine decay length; 0 means total_steps
    end_lr_factor: float = 0.0
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    data: int = -1                   # -1: all devices not used by fsdp and tensor
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    every: int = 50
    keep: int = 3                    # keep the last N ...
    keep_period: int = 0             # ... plus every M-th step (0: none)
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    every: int = 0                   # 0: no periodic evaluation
    datasets: tuple[str, ...] = ()
    samples: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192
    limit: int = 0
    batch_size: int = 16


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    student: ModelSpec
    teacher: ModelSpec
    data: DataSpec = DataSpec()
    rollout: RolloutSpec = RolloutSpec()
    selection: SelectionSpec = SelectionSpec()
    optim: OptimSpec = OptimSpec()
    mesh: MeshSpec = MeshSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    eval: EvalSpec = EvalSpec()
    prompts_per_step: int = 8
    total_steps: int = 1000
    micro_batches: int = 1           # lax.scan over micro-batches with gradient accumulation
    seed: int = 0
    log_every: int = 1
    timing_every: int = 50           # every N steps also time the rollout alone: rollout vs update tokens/s
    notes: str = ""
    extra: dict = dataclasses.field(default_factory=dict)


def describe(config: Any) -> str:
    """One `key = value` line per leaf, printed at start-up so every default the paper leaves open is visible."""
    lines = []

    def walk(prefix: str, node: Any) -> None:
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(f"{prefix}.{f.name}" if prefix else f.name, getattr(node, f.name))
        else:
            lines.append(f"{prefix} = {node!r}")

    walk("", config)
    return "\n".join(lines)


def _field_value(annotation: Any, default: Any) -> Any:
    if dataclasses.is_dataclass(default):
        return config_dict(default)
    if default is None:
        # An optional field keeps its type, so `--config.x=...` overrides are still type-checked.
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return ml_collections.FieldReference(None, field_type=typing.get_origin(options[0]) or options[0])
    return default


def config_dict(spec: Any = None) -> ml_collections.ConfigDict:
    """The ConfigDict with every key of a dataclass (default: TrainConfig) at its default value."""
    cls = spec if isinstance(spec, type) else type(spec) if spec is not None else TrainConfig
    hints = typing.get_type_hints(cls)
    out = ml_collections.ConfigDict()
    for f in dataclasses.fields(cls):
        if spec is not None and not isinstance(spec, type):
            default = getattr(spec, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = hints[f.name]()  # a required nested spec: its own defaults
        out[f.name] = _field_value(hints[f.name], default)
    return out


def apply_variant(config: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """Sets selection.rule and selection.ratio from a paper variant name; None keeps the file's choice."""
    if variant is None:
        return config
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    config.selection.rule, config.selection.ratio = VARIANTS[variant]
    return config


def paper_config(*, student: str, teacher: str, learning_rate: float, fsdp: int, tensor: int,
                 variant: str | None) -> ml_collections.ConfigDict:
    """PAPER.md Table 9 (identical across pairs except lr and GPUs) plus the section 12 defaults.

    `student`/`teacher` are models.PRESETS names: they give the shapes for `--dry_run`; a real run sets
    `--config.student.path=` / `--config.teacher.path=` (local HF folders, checked against the preset shapes).
    """
    c = config_dict()
    c.student.preset, c.teacher.preset = student, teacher
    for spec in (c.student, c.teacher):
        spec.param_dtype, spec.compute_dtype, spec.remat = "bfloat16", "bfloat16", "full"
    c.student.param_dtype = "float32"  # fp32 master weights for AdamW; compute in bf16
    c.data.source = "dapo_math_17k_train.parquet"  # DAPO-Math-17k 80% split (seed 42), a local file
    c.data.prompt_field = "prompt"
    c.data.answer_field = "reward_model.ground_truth"
    c.data.max_prompt_len = 2048
    c.data.enable_thinking = False
    c.rollout.samples_per_prompt = 16
    c.rollout.max_new_tokens = 8192
    c.selection.chunk_size = 512
    c.optim.learning_rate = learning_rate
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 1.0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, fsdp, tensor
    c.prompts_per_step = 8
    c.micro_batches = 32  # 128 rollouts of up to 10240 tokens: 4 per micro-batch bound activation memory
    c.total_steps = 1739  # one epoch of 13,918 DAPO prompts at 8 prompts per step (PAPER.md section 9)
    c.checkpoint.every = 50
    c.checkpoint.keep = 3
    c.checkpoint.keep_period = 500
    c.eval.every = 50
    c.eval.datasets = ("math500.jsonl", "aime24.jsonl", "aime25.jsonl")
    c.eval.samples = 16
    c.eval.max_new_tokens = 8192
    return apply_variant(c, variant)
