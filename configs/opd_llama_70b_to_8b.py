"""Llama-3.3-70B-Instruct -> Llama-3.1-8B-Instruct on DAPO-Math, the paper's "Llama" pair (Tables 3-6).

Hardware: 8 x H200 (the paper) or a TPU v5p-32 slice; mesh fsdp 4 x tensor 2. The 70B teacher is stored in
bf16 and sharded like the student; it is never checkpointed.
Command:
  python -m tipjax.train --config=configs/opd_llama_70b_to_8b.py:soft_or50 \\
      --config.student.path=/models/Llama-3.1-8B-Instruct --config.teacher.path=/models/Llama-3.3-70B-Instruct \\
      --config.data.source=/data/dapo_math_17k_train.parquet --workdir=/runs/llama_soft_or50
Memory check: python -m tipjax.train --config=configs/opd_llama_70b_to_8b.py:soft_or50 --dry_run --devices=8
Expected result (paper, mean@16 %, MATH-500 / AIME'24 / AIME'25): all 71.0/21.5/4.9; soft_or50 74.7/26.0/11.5.
Paper peak memory: 41.6 GB (all), 32.1 GB (entropy50) per H200. Runtime: not measured by tipjax yet.
"""

from tipjax.config_schema import config_dict
from tipjax.paper_variants import apply_variant


def get_config(arg=None):
    c = config_dict()
    # Models: presets give the shapes for --dry_run; a real run sets *.path (checked against the preset shapes).
    c.student.preset, c.teacher.preset = "Llama-3.1-8B", "Llama-3.3-70B"
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
    c.selection.chunk_size = 512
    c.selection.divergence = "rkl"
    c.selection.options = dict(norm_scope="batch")  # statistics over all 128 rollouts, whatever micro_batches
    # AdamW, cosine schedule; warmup 0, weight decay 0.1 and clip 1.0 from the reference launch scripts.
    c.optim.learning_rate = 3e-7
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
