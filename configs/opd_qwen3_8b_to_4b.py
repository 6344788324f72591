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

from tipjax.train_config import paper_config


def get_config(arg=None):
    return paper_config(student="Qwen3-4B", teacher="Qwen3-8B", learning_rate=1e-6, fsdp=4, tensor=2, variant=arg)
