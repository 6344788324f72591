"""The paper's math evaluation: mean@16 at temperature 1.0, top-p 1.0, on MATH-500, AIME 2024 and AIME 2025.

Command (one GPU; Qwen3-4B in bfloat16, 560 problems x 16 samples):
  python -m tipjax.eval --config=configs/eval_math.py --model /path/to/Qwen3-4B --out eval_math.json
  python -m tipjax.eval --config=configs/eval_math.py:tiny --model /path/to/tiny_hf_folder   # CPU smoke run
Any field can be overridden: --config.max_new_tokens=16384 --config.prompt.enable_thinking=True.
Settings the paper does not give (PAPER.md section 5) are tipjax choices: top-k off, 8192 new tokens (the
training response length), Qwen chat template with enable_thinking=False (the reference launcher's choice),
prompt = problem + " " + "Let's think step by step and output the final answer within \\boxed{}.".
Expected result (paper Table 3, student after full-token OPD from Qwen3-8B(GRPO)): MATH-500 76.7, AIME'24
21.9, AIME'25 19.4 (mean@16, %). Runtime on one GPU is not yet measured.
Bare data file names are read from ../shared/data beside the repository (tipjax.data.resolve_data_path; never
copied into it).
"""

from tipjax.eval import EvalConfig
from tipjax.config_schema import config_dict


def get_config(arg=None):
    c = config_dict(EvalConfig)
    c.data = ("math500.jsonl", "aime24.jsonl", "aime25.jsonl")
    c.n = 16
    c.temperature = 1.0
    c.top_p = 1.0
    c.top_k = 0
    c.max_new_tokens = 8192
    c.batch_size = 256
    c.dtype = "bfloat16"
    if arg == "tiny":  # CPU: a few problems of each set, short responses
        c.n = 2
        c.limit = 2
        c.max_new_tokens = 8
        c.batch_size = 4
        c.dtype = "float32"
    elif arg is not None:
        raise ValueError(f"unknown variant {arg!r}; known: tiny")
    return c
