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

from tipjax.train_config import paper_config


def get_config(arg=None):
    return paper_config(student="Llama-3.1-8B", teacher="Llama-3.3-70B", learning_rate=3e-7, fsdp=4, tensor=2,
                        variant=arg)
