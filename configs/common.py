"""Shared building blocks of the experiment configs: the full key set with the paper's defaults.

Each experiment file calls `base_config()` and changes what its experiment changes; `apply_variant`
implements the paper's rule variants (`:all`, `:entropy50`, `:soft_or50`, ...), identical in every file.
"""

import ml_collections

# variant -> (rule, retention ratio), the rows of PAPER.md Tables 3-8.
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


def model_spec(path=None, preset=None, arch=None, dtype="bfloat16", remat="full"):
    spec = ml_collections.ConfigDict()
    spec.path = ml_collections.FieldReference(path, field_type=str)
    spec.preset = ml_collections.FieldReference(preset, field_type=str)
    spec.arch = ml_collections.FieldReference(arch, field_type=dict)
    spec.init_seed = 0
    spec.param_dtype = "float32" if dtype == "float32" else "bfloat16"
    spec.compute_dtype = dtype
    spec.remat = remat
    return spec


def base_config():
    c = ml_collections.ConfigDict()
    c.student = model_spec()
    c.teacher = model_spec()
    c.data = ml_collections.ConfigDict(dict(
        source="synthetic", tokenizer=ml_collections.FieldReference(None, field_type=str),
        prompt_field=ml_collections.FieldReference(None, field_type=str), answer_field="answer",
        suffix="Let's think step by step and output the final answer within \\boxed{}.",
        enable_thinking=ml_collections.FieldReference(None, field_type=bool),
        max_prompt_len=2048, over_long="skip", seed=42, synthetic_min_len=4, synthetic_max_len=16))
    c.rollout = ml_collections.ConfigDict(dict(
        samples_per_prompt=16, max_new_tokens=8192, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=()))
    c.selection = ml_collections.ConfigDict(dict(
        rule="all", ratio=1.0, divergence="rkl", beta=0.5, chunk_size=512, options={}))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-6, warmup_steps=0, decay_steps=0, end_lr_factor=0.0, weight_decay=0.1,
        b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=3, keep_period=0, async_save=True))
    c.eval = ml_collections.ConfigDict(dict(
        every=0, datasets=(), samples=16, temperature=1.0, top_p=1.0, max_new_tokens=8192, limit=0, batch_size=16))
    c.prompts_per_step = 8
    c.total_steps = 1000
    c.micro_batches = 1
    c.seed = 0
    c.log_every = 1
    c.notes = ""
    c.extra = {}
    return c


def apply_variant(config, variant):
    """Sets selection.rule and selection.ratio from a variant name; None keeps the file's default."""
    if variant is None:
        return config
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    config.selection.rule, config.selection.ratio = VARIANTS[variant]
    return config
