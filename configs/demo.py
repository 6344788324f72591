"""The embedded default: watch a small student learn multi-step arithmetic from a teacher, on a laptop CPU.

Command (CPU):
  python -m tipjax.train --config=configs/demo.py --workdir=/tmp/tipjax_demo
First use builds the demo teacher and student by SFT (tipjax.demo; cached in $TIPJAX_CACHE/demo/<fingerprint>,
default ~/.cache/tipjax/demo/<fingerprint>, rebuilt when the recipe changes). Then it evaluates the student on
held-out problems, runs OPD with Soft-OR at 50% retention, evaluates again, and prints before/after accuracy
with standard errors (also in WORKDIR/eval_report.json).
Variants: tiny (1-layer models, a few steps: the test), or a paper rule (:all, :entropy50, :q3_20, ...;
"tiny,all" combines them).
Task: arithmetic, 3 one-digit operations (+, -); greedy accuracy on 500 held-out problems, SE over problems.
Teacher: Qwen3-shaped, D=128, 3 layers, 450 SFT steps; student: D=96, 2 layers, 300 SFT steps; OPD: 400 steps of
16 prompts x 4 samples, lr 3e-3, Soft-OR 50%.
Measured (2 shared CPU cores, load ~4-5, fresh cache, 4 min 50 s wall in all; teacher SFT 119 s, student 40 s):
teacher 93.4% +- 1.1%; student 34.0% +- 2.1% before OPD -> 70.4% +- 2.0% after (+36.4 points).
With the models cached, a rerun skips the two SFT builds (estimated 2.5-3 minutes; not measured).
"""

from tipjax import demo, tasks
from tipjax.config_schema import config_dict
from tipjax.paper_variants import VARIANTS, apply_variant


def get_config(arg=None):
    words = [w for w in (arg or "").split(",") if w]
    size = "tiny" if "tiny" in words else "full"
    variants = [w for w in words if w != "tiny"]
    if len(variants) > 1 or (variants and variants[0] not in VARIANTS):
        raise ValueError(f"unknown variant {arg!r}; known: tiny and {sorted(VARIANTS)}")
    full = size == "full"
    p = demo.paths(size)
    c = config_dict()
    c.prepare = "tipjax.demo:prepare"
    c.extra = {"demo_size": size}
    c.student.path, c.teacher.path = str(p["student"]), str(p["teacher"])
    c.data.source = str(p["prompts"])
    c.data.instruction = tasks.get(demo.TASK).instruction
    c.data.max_prompt_length = demo.PROMPT_LENGTH
    c.rollout.samples_per_prompt = 4
    c.rollout.max_new_tokens = demo.RESPONSE_LENGTH
    c.selection.rule, c.selection.ratio = "soft_or", 0.5
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 10 if full else 0
    c.optim.weight_decay = 0.0
    c.prompts_per_step = 16 if full else 2
    c.total_steps = 400 if full else 2
    c.mesh.data = 1
    c.checkpoint.every, c.checkpoint.keep = (50, 1) if full else (2, 1)
    c.timing_every = 0
    c.eval.at_start = True
    c.eval.datasets = (str(p["eval"]),)
    c.eval.samples = 1 if full else 1
    c.eval.temperature = 0.0
    c.eval.max_new_tokens = demo.RESPONSE_LENGTH
    c.eval.batch_size = 128 if full else 8
    return apply_variant(c, variants[0] if variants else None)
