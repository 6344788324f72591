"""The frozen dataclasses a run sees, with the paper's defaults; `configs/*.py` ConfigDicts become these at start-up.

Every field here is a config key: `--config.selection.ratio=0.2` sets `TrainConfig.selection.ratio`.
Defaults follow the paper (PAPER.md section 5, Table 9) and, where the paper is silent, PAPER.md section 12.
The loader is tipjax.config_loader, the checks tipjax.config_checks, the paper's named variants
tipjax.paper_variants.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import ml_collections

from tipjax.data import INSTRUCTION


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
    attention: str = "auto"          # auto (GPU cudnn, TPU splash, where they fit) | xla | cudnn | xla_sdpa | splash
    query_chunk: int = 1024          # longer query blocks are attended this many rows at a time
    decode_attention: str = "auto"   # one-token decode: auto (kernel on CUDA where it fits) | xla | pallas


@dataclasses.dataclass(frozen=True)
class TeacherSpec(ModelSpec):
    """The teacher: a separate model (the ModelSpec fields), or the student itself (self-distillation)."""

    source: str = "model"            # model | student (current weights, no extra memory) | student_initial (step 0)


TEACHER_SOURCES = ("model", "student", "student_initial")


def teacher_source(cfg) -> str:
    """teacher.source; a plain ModelSpec in the teacher's place is a separate model."""
    return getattr(cfg.teacher, "source", "model")


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """A knob's value over training: from its base value (the key beside this one) to `end` over `steps`."""

    kind: str = "constant"           # constant | linear | cosine
    end: float = 0.0                 # the value after `steps` steps (unused when constant)
    steps: int = 0                   # 0: total_steps


@dataclasses.dataclass(frozen=True)
class DataSpec:
    source: str = "synthetic"        # "synthetic" (random prompt ids, CPU demos) or a .jsonl/.parquet prompt file
    tokenizer: str | None = None     # HF folder with the tokenizer; default the student's path
    prompt_field: str | None = None  # default: the first of data.PromptOptions.prompt_fields present
    answer_field: str = "answer"
    instruction: str = INSTRUCTION   # appended to a plain-text problem ("" appends nothing)
    enable_thinking: bool | None = None
    max_prompt_length: int = 2048    # prompts are left padded to exactly this bucket
    overlong: str = "skip"           # skip | truncate
    seed: int = 42
    synthetic_min_len: int = 4       # synthetic prompts: lengths uniform in [min, max]
    synthetic_max_len: int = 16
    # Teacher-only context (privileged information): what only the teacher sees before the shared response.
    teacher_system_prompt: str = ""  # a system message the student does not get
    teacher_template: str = ""       # replaces the problem text, e.g. "{problem}\n\nA solution:\n{solution}"
    teacher_prefix: str = ""         # text before the teacher's user message ...
    teacher_suffix: str = ""         # ... and after it
    teacher_max_prompt_length: int = 0  # the teacher prompt's own bucket (0: data.max_prompt_length)


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    samples_per_prompt: int = 16
    max_new_tokens: int = 8192
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    eos_token_id: tuple[int, ...] = ()   # default: the student's config eos ids
    groups: int = 1                  # sample the batch in this many sequential row groups: response KV / groups
    kv_cache_dtype: str = ""         # "" = compute dtype; float8_e4m3fn halves the KV bytes a decode step reads
    share_prompt: bool = True        # a prompt's samples share one copy of its keys (sampling.generate)


@dataclasses.dataclass(frozen=True)
class SelectionSpec:
    rule: str = "all"                # all random entropy_sample entropy_topk soft_or soft_or_bottom q3 div
    ratio: float = 1.0
    divergence: str = "rkl"          # rkl | fkl | jsd
    beta: float = 0.5                # jsd mixture weight
    ratio_schedule: ScheduleSpec = ScheduleSpec()  # ratio over training (start: selection.ratio)
    beta_schedule: ScheduleSpec = ScheduleSpec()   # beta over training (start: selection.beta)
    chunk_size: int = 512
    options: dict = dataclasses.field(default_factory=dict)  # selection.SelectionOptions fields


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    learning_rate: float = 1e-6
    schedule: str = "cosine"         # after warmup: cosine | linear | constant (to end_lr_factor * lr)
    warmup_steps: int = 0
    decay_steps: int = 0             # cosine decay length; 0 means total_steps
    end_lr_factor: float = 0.0
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    max_skipped: int = 10            # stop the run after this many consecutive non-finite (skipped) updates


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
    at_start: bool = False           # also before the first step: eval_report.json holds before/after accuracy


@dataclasses.dataclass(frozen=True)
class LogSpec:
    """Optional metric sinks beside metrics.jsonl and TensorBoard."""

    wandb_project: str = ""          # "" : no W&B (wandb is never imported); needs `pip install -e ".[wandb]"`
    wandb_entity: str = ""
    wandb_name: str = ""             # run name (default: the workdir's name)
    wandb_mode: str = "online"       # online | offline (files under WORKDIR/wandb, `wandb sync` later)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    student: ModelSpec
    teacher: TeacherSpec
    data: DataSpec = DataSpec()
    rollout: RolloutSpec = RolloutSpec()
    selection: SelectionSpec = SelectionSpec()
    optim: OptimSpec = OptimSpec()
    mesh: MeshSpec = MeshSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    eval: EvalSpec = EvalSpec()
    log: LogSpec = LogSpec()
    prompts_per_step: int = 8
    total_steps: int = 1000
    micro_batches: int = 1           # lax.scan over micro-batches with gradient accumulation
    seed: int = 0
    resume: bool = True              # continue from the workdir's newest good checkpoint (False: it must have none)
    log_every: int = 1
    timing_every: int = 50           # every N steps also time the rollout alone: rollout vs update tokens/s
    notes: str = ""
    extra: dict = dataclasses.field(default_factory=dict)
    prepare: str = ""                # "module:function" run first, cfg -> cfg: builds the models/data the config names


@dataclasses.dataclass(frozen=True)
class SFTDataSpec:
    """SFT pairs: a built-in task (tipjax.tasks) or a .jsonl file with prompt and solution fields."""

    task: str = ""                   # tipjax.tasks name; generates n_examples train-split problems
    difficulty: dict = dataclasses.field(default_factory=dict)  # the task's difficulty knobs
    n_examples: int = 10000
    source: str = ""                 # instead of task: a .jsonl/.parquet file (problem + solution_field)
    solution_field: str = "solution"
    instruction: str = INSTRUCTION   # appended to every problem, as DataSpec.instruction
    enable_thinking: bool | None = None
    max_prompt_length: int = 64      # prompts are left padded to exactly this width
    max_response_length: int = 64    # response + eos, right padded to exactly this width
    seed: int = 0                    # task generation and shuffling


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """`python -m tipjax.sft`: teacher-forced cross-entropy on response tokens (tipjax.sft)."""

    student: ModelSpec
    tokenizer: str | None = None     # HF folder; default the student's path, else the task's tokenizer
    data: SFTDataSpec = SFTDataSpec()
    optim: OptimSpec = OptimSpec()
    mesh: MeshSpec = MeshSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    eval: EvalSpec = EvalSpec()
    batch_size: int = 32             # sequences per step
    total_steps: int = 1000
    micro_batches: int = 1
    seed: int = 0
    resume: bool = True
    log_every: int = 1
    notes: str = ""


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
