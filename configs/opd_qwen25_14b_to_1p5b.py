"""Qwen2.5-14B-Instruct-thinking -> Qwen2.5-1.5B-Instruct on DAPO-Math, the paper's "Qwen2.5" pair.

Hardware: 4 x H200 (the paper); mesh fsdp 2 x tensor 2. The two models' embedding tables are padded
differently (152064 vs 151936 rows): both heads are sliced to the tokenizer's real vocabulary.
Command:
  python -m tipjax.train --config=configs/opd_qwen25_14b_to_1p5b.py:soft_or50 \\
      --config.student.path=/models/Qwen2.5-1.5B-Instruct --config.teacher.path=/models/Qwen2.5-14B-thinking \\
      --config.data.source=/data/dapo_math_17k_train.parquet --workdir=/runs/qwen25_soft_or50
Memory check: python -m tipjax.train --config=configs/opd_qwen25_14b_to_1p5b.py:soft_or50 --dry_run --devices=4
Expected result (paper, mean@16 %, MATH-500 / AIME'24 / AIME'25): all 55.1/2.4/2.1; soft_or50 56.2/3.8/1.5.
Paper peak memory: 35.8 GB (all), 19.7 GB (entropy50) per H200. Runtime: not measured by tipjax yet.
"""

from tipjax.train_config import paper_config


def get_config(arg=None):
    return paper_config(student="Qwen2.5-1.5B", teacher="Qwen2.5-14B", learning_rate=1e-6, fsdp=2, tensor=2,
                        variant=arg)
