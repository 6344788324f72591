"""Tiny random teacher and student: the whole OPD loop end to end on a laptop CPU in about a minute.

Command (CPU, ~1 minute):
  python -m tipjax.train --config=configs/tiny.py --workdir=/tmp/tipjax_tiny
  python -m tipjax.train --config=configs/tiny.py:soft_or50 --workdir=/tmp/tipjax_tiny_soft_or
Variants: the paper's rules (tipjax.paper_variants.VARIANTS), e.g. :all, :entropy50, :soft_or50, :q3_10.
Expected result: the full-token reverse KL on fresh rollouts (rkl_all) falls from about 2.9 to about 0.6 in
30 steps (measured with :all, about 10 s on 2 CPU cores),
because the student (2 layers) is trained toward a random teacher (3 layers) on its own samples.
Prompts are random token ids (no tokenizer needed), so this exercises every stage except text handling.
"""

from tipjax.config_schema import config_dict
from tipjax.paper_variants import apply_variant


def _arch(hidden, layers, intermediate, init_std):
    return dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=256, hidden_size=hidden,
                intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=10000.0,
                max_position_embeddings=512, tie_word_embeddings=False, initializer_range=init_std,
                bos_token_id=1, eos_token_id=2)


def get_config(arg=None):
    c = config_dict()
    c.student.arch = _arch(64, 2, 128, 0.3)
    c.student.init_seed = 1
    c.teacher.arch = _arch(96, 3, 192, 0.1)
    c.teacher.init_seed = 2
    c.data.max_prompt_length = 16
    c.rollout.samples_per_prompt = 4
    c.rollout.max_new_tokens = 32
    c.selection.chunk_size = 64
    c.optim.learning_rate = 1e-2
    c.optim.warmup_steps = 2
    c.optim.weight_decay = 0.0
    c.prompts_per_step = 4
    c.total_steps = 30
    c.checkpoint.every = 10
    c.timing_every = 10
    return apply_variant(c, arg)
