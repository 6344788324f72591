"""Qwen3-8B (GRPO) -> Qwen3-4B on DAPO-Math, the paper's "Qwen3 Small" pair (PAPER.md Tables 3-5, 8).

Hardware: 8 x H200 (the paper), or a TPU v5p-16 slice; mesh fsdp 4 x tensor 2 (the paper's TP 2).
Command (one host with 8 GPUs):
  python -m tipjax.train --config=configs/opd_qwen3_8b_to_4b.py:soft_or50 \\
      --config.student.path=/models/Qwen3-4B --config.teacher.path=/models/Qwen3-8B-GRPO \\
      --config.data.source=/data/dapo_math_17k_train.parquet --workdir=/runs/qwen3_soft_or50
Memory check without weights or GPUs (CPU, fake devices):
  python -m tipjax.train --config=configs/opd_qwen3_8b_to_4b.py:soft_or50 --dry_run --devices=8
Variants: :all :entropy50 :entropy20 :soft_or50 :soft_or20 :q3_10 :q3_20 :div50 :div10 :soft_or_bottom50.
Expected result (paper, mean@16 %, MATH-500 / AIME'24 / AIME'25): all 76.7/21.9/19.4; soft_or50 79.1/25.7/21.9;
entropy50 78.6/23.8/20.7; q3_10 76.1/21.5/17.1. Paper peak memory: 72.0 GB (all), 38.1 GB (entropy50) per H200.
Runtime: not measured by tipjax yet (the paper does not report it).
"""

from tipjax.config_schema import config_dict
from tipjax.paper_variants import apply_variant


def get_config(arg=None):
    c = config_dict()
    # Models: presets give the shapes for --dry_run; a real run sets *.path (checked against the preset shapes).
    c.student.preset, c.teacher.preset = "Qwen3-4B", "Qwen3-8B"
    c.student.param_dtype, c.student.compute_dtype = "float32", "bfloat16"  # fp32 AdamW master weights
    c.teacher.param_dtype, c.teacher.compute_dtype = "bfloat16", "bfloat16"
    c.student.remat = c.teacher.remat = "full"
    # Data: the DAPO-Math-17k 80% training split (seed 42), a local parquet file.
    c.data.source = "dapo_math_17k_train.parquet"
    c.data.prompt_field = "prompt"
    c.data.answer_field = "reward_model.ground_truth"
    c.data.max_prompt_length = 2048
    c.data.enable_thinking = False
    # Table 9: 8 prompts x 16 rollouts per update, 8192 new tokens at temperature 1.0, top-p 1.0.
    c.prompts_per_step = 8
    c.rollout.samples_per_prompt = 16
    c.rollout.max_new_tokens = 8192
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    # Off for fidelity to the paper. "float8_e4m3fn" halves the KV bytes the rollout reads (most of a decode step
    # at 8192 tokens; on Hopper the Pallas kernel reads it: docs/performance.md, run I); samples then come from
    # rounded keys and values (docs/training.md).
    c.rollout.kv_cache_dtype = ""
    c.selection.chunk_size = 512
    c.selection.divergence = "rkl"
    c.selection.options = dict(norm_scope="batch")  # statistics over all 128 rollouts, whatever micro_batches
    # AdamW, cosine schedule; warmup 0, weight decay 0.1 and clip 1.0 from the reference launch scripts.
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.1
    c.optim.grad_clip = 1.0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 4, 2  # tensor parallel 2 as in the paper
    c.micro_batches = 32  # 128 rollouts of up to 10240 tokens: 4 per micro-batch bound activation memory
    c.total_steps = 1739  # one epoch of 13,918 DAPO prompts at 8 prompts per step (PAPER.md section 9)
    c.checkpoint.every, c.checkpoint.keep, c.checkpoint.keep_period = 50, 3, 500
    # Evaluation every 50 steps: mean@16 at temperature 1.0 on MATH-500, AIME 2024 and AIME 2025.
    c.eval.every = 50
    c.eval.datasets = ("math500.jsonl", "aime24.jsonl", "aime25.jsonl")
    c.eval.samples = 16
    c.eval.max_new_tokens = 8192
    return apply_variant(c, arg)
