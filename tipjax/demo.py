"""The embedded demo: a real task, a teacher that solves it and a student that does not yet, built on first use.

    python -m tipjax.train --config=configs/demo.py --workdir=/tmp/tipjax_demo

configs/demo.py names `prepare` below as its preparation step (TrainConfig.prepare). It builds, unless
already there, in the demo cache folder

    $TIPJAX_CACHE/demo/arithmetic-<fingerprint>/      (default ~/.cache/tipjax/demo/...)
      recipe.json            task, difficulty, problem counts (the fingerprint's input; marks the folder as tipjax's)
      prompts.jsonl          OPD prompts: train-split arithmetic problems (tipjax.tasks)
      eval.jsonl             held-out problems (the task's eval split): the before/after evaluation
      teacher-<fp>/, student-<fp>/   Hugging Face folders exported from SFT runs (python -m tipjax.sft); <fp> is
                             the fingerprint of the model's SFT recipe (architecture, steps, optimizer, data)
      runs/teacher-<fp>/, runs/student-<fp>/   those SFT workdirs (checkpoints, metrics.jsonl)
      teacher-<fp>.eval-<fp>.json   the teacher's held-out accuracy under the run's eval settings

The teacher is trained by SFT to high held-out accuracy; the student, a smaller model, only briefly, so its
rollouts have the right form but often the wrong numbers. Changing a model's recipe builds that model anew
(a new fingerprint), changing the task or data builds everything anew; old folders are left alone (delete
them by hand). An interrupted build resumes: the SFT runs continue from
their checkpoints, and every file and model folder appears atomically. Nothing outside the folder is written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

from tipjax import tasks
from tipjax.tasks import tokenizer as task_tokenizer
from tipjax.config_schema import EvalSpec

TASK = "arithmetic"
DIFFICULTY = {"steps": 3, "digits": 1}          # "Compute 6+7-5+9." -> "6+7=13. 13-5=8. 8+9=17. \boxed{17}"
PROMPT_LENGTH, RESPONSE_LENGTH = 40, 32          # tokens: prompts are at most 38, responses + eos at most 31
RECIPE_VERSION = 1                               # bump when the build procedure itself changes


def arch(hidden: int, layers: int, heads: int, intermediate: int, head_dim: int = 32) -> dict:
    """A Qwen3-shaped config.json dict over the task's 104-token vocabulary."""
    return dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=task_tokenizer.VOCAB_SIZE,
                hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim, rms_norm_eps=1e-6,
                rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.02,
                bos_token_id=None, eos_token_id=3, pad_token_id=0)


# role -> (architecture, SFT steps, batch size, learning rate) per size; "tiny" is the test's.
SIZES = {
    "full": {"teacher": (arch(128, 3, 4, 384), 450, 32, 3e-3), "student": (arch(96, 2, 3, 256), 300, 32, 3e-3),
             "n_examples": 16000, "n_prompts": 4000, "n_eval": 500},
    "tiny": {"teacher": (arch(32, 1, 1, 64), 4, 8, 3e-3), "student": (arch(32, 1, 1, 64), 2, 8, 3e-3),
             "n_examples": 64, "n_prompts": 32, "n_eval": 8},
}


def sft_config(role: str, size: str = "full"):
    """The ConfigDict of the SFT run that builds the demo's teacher or student (tipjax.config_schema.SFTConfig)."""
    from tipjax.config_schema import SFTConfig, config_dict

    architecture, steps, batch, lr = SIZES[size][role]
    c = config_dict(SFTConfig)
    c.student.arch = architecture
    c.student.init_seed = {"teacher": 1, "student": 2}[role]
    c.data.task = TASK
    c.data.difficulty = dict(DIFFICULTY)
    c.data.n_examples = SIZES[size]["n_examples"]
    c.data.instruction = tasks.get(TASK).instruction
    c.data.max_prompt_length, c.data.max_response_length = PROMPT_LENGTH, RESPONSE_LENGTH
    c.data.seed = {"teacher": 0, "student": 1}[role]
    c.batch_size, c.total_steps = batch, steps
    c.optim.learning_rate, c.optim.warmup_steps, c.optim.end_lr_factor = lr, min(50, steps // 10), 0.1
    c.optim.weight_decay = 0.01
    c.mesh.data = 1  # tiny models: one device, no collectives
    c.checkpoint.every, c.checkpoint.keep = max(steps // 4, 1), 1
    c.checkpoint.async_save = False
    return c


def recipe(size: str = "full") -> dict:
    """What the cached files depend on: the task, its difficulty and the problem counts."""
    return {"version": RECIPE_VERSION, "task": TASK, "difficulty": DIFFICULTY,
            "n_prompts": SIZES[size]["n_prompts"], "n_eval": SIZES[size]["n_eval"]}


def cache_root() -> Path:
    return Path(os.environ.get("TIPJAX_CACHE") or Path.home() / ".cache" / "tipjax") / "demo"


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def folder(size: str = "full") -> Path:
    return cache_root() / f"{TASK}-{_fingerprint(recipe(size))}"


def paths(size: str = "full") -> dict[str, Path]:
    """The demo's files; each model folder is named by the fingerprint of its own SFT recipe (and the data's)."""
    base = folder(size)
    out = {"base": base, "prompts": base / "prompts.jsonl", "eval": base / "eval.jsonl"}
    for role in ("teacher", "student"):
        out[role] = base / f"{role}-{_fingerprint([recipe(size), sft_config(role, size).to_dict()])}"
    return out


# --- the preparation step -----------------------------------------------------------------------------------

def prepare(cfg):
    """TrainConfig.prepare for configs/demo.py: builds whatever of the demo folder is missing; returns cfg."""
    size = cfg.extra.get("demo_size", "full")
    build(size, eval_spec=cfg.eval)
    return cfg


def build(size: str = "full", *, eval_spec=None) -> dict[str, Path]:
    p = paths(size)
    base = p["base"]
    if base.exists() and not (base / "recipe.json").is_file():
        raise FileExistsError(f"{base} exists but holds no recipe.json: not a tipjax demo folder; not touching it")
    base.mkdir(parents=True, exist_ok=True)
    _write(base / "recipe.json", json.dumps(recipe(size), indent=1, sort_keys=True, default=str) + "\n")
    task = tasks.get(TASK)
    for key, split, n in (("prompts", "train", SIZES[size]["n_prompts"]), ("eval", "eval", SIZES[size]["n_eval"])):
        if not p[key].is_file():  # seed 2: another draw of train problems than the SFT sets' (seeds 0 and 1)
            tasks.write_examples(p[key], task.generate(n, 2 if split == "train" else 0, split, **DIFFICULTY),
                                 TASK, split)
    for role in ("teacher", "student"):
        if not (p[role] / "config.json").is_file():
            _build_model(role, size, p[role])
    # Named by the evaluation settings too: the teacher's score is read under the student's eval settings.
    scores = base / f"{p['teacher'].name}.eval-{_fingerprint(dataclasses.asdict(eval_spec or EvalSpec()))}.json"
    if eval_spec is not None and not scores.is_file():
        _write(scores, json.dumps(_evaluate(p["teacher"], p["eval"], eval_spec), indent=1))
    teacher = json.loads(scores.read_text()) if scores.is_file() else {}
    if teacher:
        print(f"demo teacher ({p['teacher']}): held-out accuracy {teacher['mean_at_n']:.1%} ± "
              f"{teacher['mean_at_n_se']:.1%} on {teacher['n_problems']} problems", flush=True)
    return p


def _build_model(role: str, size: str, out: Path) -> None:
    from tipjax import export, sft
    from tipjax.config_loader import to_dataclass
    from tipjax.config_schema import SFTConfig

    cfg = to_dataclass(copy.deepcopy(sft_config(role, size)), SFTConfig)
    workdir = out.parent / "runs" / out.name
    print(f"demo: building the {role} by SFT ({cfg.total_steps} steps) in {workdir}", flush=True)
    t0 = time.perf_counter()
    final = sft.train(cfg, workdir)
    export.export(workdir, out, overwrite=False)
    print(f"demo: {role} ready in {time.perf_counter() - t0:.0f} s (final SFT loss {final.get('loss', float('nan')):.3f})",
          flush=True)


def _evaluate(model_dir: Path, eval_file: Path, spec) -> dict:
    from tipjax import data, eval as tev

    loaded = tev.resolve_model(model_dir)
    report = tev.evaluate(loaded.model, loaded.tokenizer, eval_file, n=spec.samples, temperature=spec.temperature,
                          top_p=spec.top_p, max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
                          limit=spec.limit or None, eos_token_ids=loaded.eos_token_ids,
                          prompt_options=data.PromptOptions(instruction=tasks.get(TASK).instruction), progress=False)
    return {k: report[k] for k in ("n_problems", "n", "mean_at_n", "mean_at_n_se", "pass_at_n")}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
