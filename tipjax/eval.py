"""Math evaluation: mean@n and pass@n accuracy with math-verify grading.

    python -m tipjax.eval --model HF_FOLDER --data ../shared/data/math500.jsonl --n 16 --out report.json
    python -m tipjax.eval --config=configs/eval_math.py --model HF_FOLDER      # the paper's setting

Every prompt is sampled n times. Samples of all prompts are laid out as one flat list (prompts sorted by
token length, longest first, so a batch's prompts share a length bucket), cut into batches of
``batch_size`` sequences; each batch is one ``sampling.generate`` call with a fixed row count, so the
number of compiled programs is at most the number of prompt-length buckets. While the device samples
batch i, the host decodes and grades batch i-1 (JAX dispatch is asynchronous).

Metrics, with c_i correct samples of n for problem i of P:
  mean@n = (1/P) sum_i c_i/n           pass@n = (1/P) sum_i [c_i > 0]
  SE     = sample std (ddof=1) over problems of the per-problem value / sqrt(P)
  std over samples: the std (ddof=1) across the n sample sets j of acc_j = (1/P) sum_i correct_ij, one
  reading of the paper's "mean@16 +- std".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from tipjax import cli, config_loader, data, models, sampling, tokenization
from tipjax.data import PromptOptions
from tipjax.grading import grade

__all__ = ["EvalConfig", "LoadedModel", "evaluate", "grade", "main", "resolve_model", "run", "summarise"]

# Metadata fields that get a per-value breakdown (MATH-500 has both).
BREAKDOWN_FIELDS = ("subject", "level")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Everything one evaluation run needs; configs/eval_math.py mirrors it."""

    model: str = ""
    data: tuple[str, ...] = ()
    data_dir: str = ""  # relative entries of `data` are looked up here
    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 8192
    batch_size: int = 64  # sequences per generate call
    seed: int = 0
    limit: int = 0  # first `limit` problems of each file; 0 = all
    out: str = ""
    dtype: str = "float32"
    decode_attention: str = "auto"  # auto | xla | pallas: the sampler's one-token attention (models/attention.py)
    keep_samples: bool = False  # store every response text in the report
    buckets: tuple[int, ...] = ()  # prompt length buckets; () = sampling's powers of two
    prompt: PromptOptions = PromptOptions()


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    model: Any
    tokenizer: Any
    eos_token_ids: tuple[int, ...]


def resolve_model(path: str | Path, dtype=jnp.float32, decode_attention: str = "auto") -> LoadedModel:
    """``--model PATH`` -> model (on one device), tokenizer and stop tokens.

    PATH is a Hugging Face folder (config.json, *.safetensors, tokenizer files) or a tipjax training workdir
    (its latest checkpoint). decode_attention is ModelConfig's.
    """
    from transformers import AutoTokenizer  # heavy import, only needed by the CLI path

    from tipjax import workdir as workdir_lib

    path = Path(path)
    if workdir_lib.is_workdir(path):
        # A training run: its latest checkpoint's student, with the tokenizer of the folder it started from.
        _check_decode_attention(json.loads((path / workdir_lib.STUDENT_CONFIG).read_text()), decode_attention)
        model = workdir_lib.load_student(path, dtype=dtype, decode_attention=decode_attention)
        source = model.config.source_dir
        if source is None:
            raise cli.UserError("the run's student had no Hugging Face folder, so no tokenizer", "--model")
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        eos = tokenization.stop_ids(source, tokenizer, model.config.eos_token_id)
        _check_vocabulary(tokenizer, eos, model.config.vocab_size, path)
        return LoadedModel(model, tokenizer, eos)
    if not (path / "config.json").is_file():
        raise cli.UsageError(f"{path} is neither a Hugging Face model folder (no config.json) nor a tipjax workdir", "--model")
    try:
        hf_config = json.loads((path / "config.json").read_text())
    except ValueError as err:
        raise cli.UserError(f"config.json is not valid JSON ({err})", path / "config.json") from None
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    vocab = hf_config.get("vocab_size", hf_config.get("text_config", {}).get("vocab_size"))
    eos = tokenization.stop_ids(path, tokenizer, None)
    if isinstance(vocab, int):  # before any weights load
        _check_vocabulary(tokenizer, eos, vocab, path)
    _check_decode_attention(hf_config, decode_attention)
    try:
        model = models.load_hf(str(path), dtype=dtype, decode_attention=decode_attention)
    except ValueError as err:  # load_hf's errors name the file or tensor: a bad folder, not a bug
        raise cli.UserError(f"cannot load the model: {err}", "--model") from err
    eos = tokenization.stop_ids(path, tokenizer, model.config.eos_token_id)
    _check_vocabulary(tokenizer, eos, model.config.vocab_size, path)
    return LoadedModel(model, tokenizer, eos)


def _check_decode_attention(hf: dict, decode_attention: str) -> None:
    """--decode-attention pallas on a model whose heads the kernel cannot take (or on GPUs without Pallas's Triton
    backend): a usage error before weights load."""
    from tipjax.config_checks import decode_kernel_misfit
    from tipjax.models import decode_kernel

    why = (decode_kernel.missing_here() or decode_kernel_misfit(hf)) if decode_attention == "pallas" else None
    if why:
        raise cli.UsageError(f"decode_attention='pallas' {why}", "--decode-attention")


def _check_vocabulary(tokenizer, eos: Sequence[int], vocab: int, where: Path) -> None:
    """A tokenizer whose ids exceed the model's embedding table, or stop ids outside it, is a user error."""
    if len(tokenizer) > vocab:
        raise cli.UserError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding table only "
                            f"{vocab} rows", where, hint="the tokenizer files do not belong to this model")
    bad = [e for e in eos if not 0 <= e < vocab]
    if bad:
        raise cli.UserError(f"stop token id(s) {bad} (generation_config.json / config.json eos_token_id) lie outside "
                            f"the vocabulary [0, {vocab})", where)


def _stats(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (ddof=1) of per-problem values."""
    if len(values) < 2:
        return float(np.mean(values)), 0.0
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))


def _scores(correct: np.ndarray) -> dict[str, float]:
    mean, mean_se = _stats(correct.mean(axis=1))
    passed, pass_se = _stats(correct.any(axis=1).astype(np.float64))
    per_sample_set = correct.mean(axis=0)
    spread = float(np.std(per_sample_set, ddof=1)) if correct.shape[1] > 1 else 0.0
    return {"n_problems": int(correct.shape[0]), "mean_at_n": mean, "mean_at_n_se": mean_se,
            "pass_at_n": passed, "pass_at_n_se": pass_se, "mean_at_n_std_over_samples": spread}


def summarise(correct: np.ndarray, lengths: np.ndarray, truncated: np.ndarray,
              metadata: dict[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """Dataset metrics from per-sample results [P, n] (see the module docstring for the formulas)."""
    correct = np.asarray(correct, bool)
    report = {**_scores(correct), "n_samples": int(correct.size),
              "mean_response_length": float(np.mean(lengths)), "truncation_rate": float(np.mean(truncated))}
    for field, values in (metadata or {}).items():
        if field not in BREAKDOWN_FIELDS:
            continue
        keys = np.array([str(v) for v in values])
        report[f"by_{field}"] = {key: _scores(correct[keys == key]) for key in sorted(set(keys), key=_natural)}
    return report


def _natural(key: str) -> tuple:
    return (0, int(key), "") if key.lstrip("-").isdigit() else (1, 0, key)


def _sample_plan(prompt_set: data.PromptSet, n: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Batches of (prompt position, sample number), longest prompts first."""
    order = sorted(range(len(prompt_set.prompts)), key=lambda i: -len(prompt_set.prompts[i].token_ids))
    jobs = [(i, s) for i in order for s in range(n)]
    return [jobs[k:k + batch_size] for k in range(0, len(jobs), batch_size)]


def _samples_per_prompt(n: int, batch_size: int) -> int:
    """Rows of one prompt in every generate call, which then share its keys (sampling.generate's num_samples):
    n when a batch holds whole prompts, batch_size when a prompt fills whole batches, else 1."""
    if batch_size % n == 0:
        return n
    return batch_size if n % batch_size == 0 else 1


def evaluate(model, tokenizer, prompts: data.PromptSet | str | Path, *, n: int = 16, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 8192, batch_size: int = 64, seed: int = 0,
             limit: int | None = None, eos_token_ids: Sequence[int] | None = None,
             prompt_options: PromptOptions = PromptOptions(), buckets: Sequence[int] | None = None,
             keep_samples: bool = False, progress: bool = True,
             generate: Callable[..., sampling.SampleOutput] = sampling.generate) -> dict[str, Any]:
    """Samples n responses per problem, grades them and returns the dataset report (metrics, per-problem
    results, timing). ``prompts`` is a prompt file (read with ``prompt_options``, first ``limit`` rows) or an
    already loaded PromptSet. ``generate`` defaults to the sampler; tests pass a scripted stand-in."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    start = time.perf_counter()
    if not isinstance(prompts, data.PromptSet):
        prompts = data.load_prompts(prompts, tokenizer, prompt_options, limit=limit)
    if eos_token_ids is None:
        eos_token_ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    eos = tuple(int(e) for e in eos_token_ids)
    pad_id = data.pad_token_id(tokenizer)
    buckets = tuple(buckets) if buckets else None
    n_prompts = len(prompts.prompts)
    correct = np.zeros((n_prompts, n), bool)
    lengths = np.zeros((n_prompts, n), np.int32)
    truncated = np.zeros((n_prompts, n), bool)
    texts = [[""] * n for _ in range(n_prompts)] if keep_samples else None
    timing = {"sampling_s": 0.0, "grading_s": 0.0}
    shapes = set()
    key = jax.random.key(seed)

    def collect(plan: list[tuple[int, int]], out: sampling.SampleOutput, width: int) -> None:
        # Fetching blocks until the device is done: that wait counts as sampling time.
        t0 = time.perf_counter()
        tokens, mask = np.asarray(out.tokens[:, width:]), np.asarray(out.response_mask[:, width:])
        row_lengths, row_truncated = np.asarray(out.lengths), np.asarray(out.truncated)
        t1 = time.perf_counter()
        responses = tokenizer.batch_decode([tokens[r][mask[r] > 0] for r in range(len(plan))],
                                           skip_special_tokens=True)
        for r, (i, s) in enumerate(plan):
            correct[i, s] = grade(responses[r], prompts.prompts[i].answer)
            lengths[i, s], truncated[i, s] = row_lengths[r], row_truncated[r]
            if texts is not None:
                texts[i][s] = responses[r]
        timing["sampling_s"] += t1 - t0
        timing["grading_s"] += time.perf_counter() - t1
        bar.update(len(plan))

    bar = tqdm(total=n_prompts * n, desc=f"eval {data.dataset_name(prompts.path)}", unit="sample",
               disable=not progress, file=sys.stderr)
    plans = _sample_plan(prompts, n, batch_size)
    per = _samples_per_prompt(n, batch_size)  # the plan's batches are runs of `per` rows of one prompt
    shared = {"num_samples": per} if per > 1 else {}
    pending = None
    for b, plan in enumerate(plans):
        # Fixed row count: the last batch is filled with copies of its first prompt, whose results are dropped.
        rows = [prompts.prompts[i] for i, _ in plan]
        batch = data.collate((rows + rows[:1] * (batch_size - len(rows)))[::per], pad_id, buckets)
        t0 = time.perf_counter()
        out = generate(model, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos,
                       rng=jax.random.fold_in(key, b), pad_token_id=pad_id, buckets=buckets, **shared)
        timing["sampling_s"] += time.perf_counter() - t0
        shapes.add((batch["prompt_ids"].shape[0] * per, batch["prompt_ids"].shape[1]))  # rows, prompt width
        if pending is not None:
            collect(*pending)
        pending = (plan, out, batch["prompt_ids"].shape[1])
    collect(*pending)
    bar.close()

    report = summarise(correct, lengths, truncated,
                       {f: [p.metadata[f] for p in prompts.prompts] for f in prompts.metadata_fields})
    report.update(
        file=prompts.path, n=n, n_rows=prompts.n_rows, skipped_prompts=prompts.n_skipped,
        truncated_prompts=prompts.n_truncated,
        timing={**timing, "total_s": time.perf_counter() - start, "generate_calls": len(plans),
                "batch_shapes": sorted(list(s) for s in shapes), "rows_sharing_a_prompt": per},
        problems=[_problem_entry(p, correct[k], lengths[k], texts[k] if texts else None)
                  for k, p in enumerate(prompts.prompts)])
    return report


def _problem_entry(prompt: data.Prompt, correct: np.ndarray, lengths: np.ndarray,
                   texts: list[str] | None) -> dict[str, Any]:
    entry = {"index": prompt.index, "answer": prompt.answer, "n_correct": int(correct.sum()),
             "correct": correct.astype(int).tolist(), "lengths": lengths.tolist(),
             **{k: v for k, v in prompt.metadata.items()}}
    if texts is not None:
        entry["responses"] = texts
    return entry


def check_settings(cfg: EvalConfig) -> None:
    """Every sampling setting's range, named by its flag, before anything loads."""
    import math

    def need(ok: bool, flag: str, value, want: str) -> None:
        if not ok:
            raise cli.UsageError(f"{flag.lstrip('-').replace('-', '_')}={value!r} {want}", flag)

    finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)  # noqa: E731
    need(cfg.n >= 1, "--n", cfg.n, "must be >= 1")
    need(cfg.batch_size >= 1, "--batch-size", cfg.batch_size, "must be >= 1")
    need(finite(cfg.temperature) and cfg.temperature >= 0, "--temperature", cfg.temperature,
         "must be a finite number >= 0 (0 is greedy)")
    need(finite(cfg.top_p) and 0 < cfg.top_p <= 1, "--top-p", cfg.top_p, "must be in (0, 1]")
    need(cfg.top_k >= 0, "--top-k", cfg.top_k, "must be >= 0 (0 disables it)")
    need(cfg.max_new_tokens >= 1, "--max-new-tokens", cfg.max_new_tokens, "must be >= 1")
    need(cfg.limit >= 0, "--limit", cfg.limit, "must be >= 0 (0: all)")
    from tipjax.models.config import DECODE_ATTENTION_BACKENDS
    need(cfg.decode_attention in DECODE_ATTENTION_BACKENDS, "--decode-attention", cfg.decode_attention,
         f"must be one of {', '.join(DECODE_ATTENTION_BACKENDS)}")


def check_output(out: str | Path) -> None:
    """--out must be a file that can be written, checked before any sampling (nothing is created here)."""
    out = Path(out)
    if out.is_dir():
        raise cli.UserError("--out is a folder, not a report file", out)
    if out.exists():
        if not os.access(out, os.W_OK):
            raise cli.UserError("--out is not writable", out)
        return
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise cli.UserError(f"--out cannot be created: {parent} is not a folder", out)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise cli.UserError(f"--out cannot be created: {parent} is not writable", out)


def _data_paths(cfg: EvalConfig) -> list[Path]:
    if not cfg.data:
        raise cli.UsageError("no evaluation data: pass --data FILE [FILE ...] or a --config with data", "--data")
    return [data.resolve_data_path(p, cfg.data_dir) for p in cfg.data]


def run(cfg: EvalConfig, *, progress: bool = True) -> dict[str, Any]:
    """Evaluates cfg.model on every file of cfg.data; returns the full report (and writes it to cfg.out)."""
    if not cfg.model:
        raise cli.UsageError("no model: pass --model HF_FOLDER or a training workdir", "--model")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise cli.UsageError(f"dtype must be float32 or bfloat16, got {cfg.dtype!r}", "--dtype")
    check_settings(cfg)
    paths = _data_paths(cfg)
    names: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"evaluation data file not found: {path}")
        for _ in data.read_rows(path):  # every row parses (file:line errors) before the model loads
            pass
        name = data.dataset_name(path)
        if name in names:
            raise cli.UsageError(f"{names[name]} and {path} both report as dataset {name!r}", "--data",
                                 hint="rename one of the files (the report is keyed by file stem)")
        names[name] = path
    if cfg.out:
        check_output(cfg.out)
    start = time.perf_counter()
    loaded = resolve_model(cfg.model, dtype=jnp.dtype(cfg.dtype), decode_attention=cfg.decode_attention)
    load_s = time.perf_counter() - start
    datasets = {}
    # The model lives on one device: say so with a one-device mesh, so that "auto" may take the Pallas decode
    # kernel on a machine with several GPUs (attention.decode_kernel_suits_here).
    device = next(iter(jax.tree.leaves(loaded.model)[0].devices()))
    with jax.set_mesh(models.make_mesh(devices=[device])):
        for path in paths:
            datasets[data.dataset_name(path)] = evaluate(
                loaded.model, loaded.tokenizer, path, n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                limit=cfg.limit or None, eos_token_ids=loaded.eos_token_ids, prompt_options=cfg.prompt,
                buckets=cfg.buckets, keep_samples=cfg.keep_samples, progress=progress)
    report = {
        "model": cfg.model,
        "settings": dataclasses.asdict(cfg),
        "eos_token_ids": list(loaded.eos_token_ids),
        "device": str(jax.devices()[0].device_kind),
        "datasets": datasets,
        "timing": {"load_s": load_s,
                   "sampling_s": sum(d["timing"]["sampling_s"] for d in datasets.values()),
                   "grading_s": sum(d["timing"]["grading_s"] for d in datasets.values()),
                   "total_s": time.perf_counter() - start},
    }
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(report, indent=1, default=str))
    return report


def format_table(report: dict[str, Any]) -> str:
    """The end-of-run summary: one row per dataset, then per-subject / per-level rows where present."""
    n = report["settings"]["n"]
    head = f"{'dataset':<34}{'problems':>9}{f'mean@{n}':>16}{f'pass@{n}':>16}{'mean len':>10}{'trunc':>8}"
    lines = [head, "-" * len(head)]

    def row(name: str, d: dict[str, Any], extra: bool) -> str:
        text = (f"{name:<34}{d['n_problems']:>9}{100 * d['mean_at_n']:>9.1f} ± {100 * d['mean_at_n_se']:<4.1f}"
                f"{100 * d['pass_at_n']:>9.1f} ± {100 * d['pass_at_n_se']:<4.1f}")
        if extra:
            text += f"{d['mean_response_length']:>10.0f}{100 * d['truncation_rate']:>7.1f}%"
        return text

    for name, d in report["datasets"].items():
        lines.append(row(name, d, True))
        for field in BREAKDOWN_FIELDS:
            for value, sub in d.get(f"by_{field}", {}).items():
                lines.append(row(f"  {field} {value}"[:34], sub, False))
    t = report["timing"]
    lines.append(f"time: load {t['load_s']:.1f}s, sampling {t['sampling_s']:.1f}s, grading {t['grading_s']:.1f}s, "
                 f"total {t['total_s']:.1f}s (accuracy in %, ± one standard error over problems)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m tipjax.eval", description=__doc__.split("\n\n")[0],
                                epilog="Also: --config=configs/eval_math.py[:variant] and --config.a.b=value overrides; "
                                       "explicit flags win over the config.")
    p.add_argument("--model", help="Hugging Face model folder or tipjax training workdir (its latest checkpoint)")
    p.add_argument("--data", nargs="+", help="prompt files (.jsonl/.parquet)")
    p.add_argument("--n", type=int, help="samples per problem (default 16)")
    p.add_argument("--temperature", type=float, help="default 1.0")
    p.add_argument("--top-p", dest="top_p", type=float, help="default 1.0")
    p.add_argument("--top-k", dest="top_k", type=int, help="0 disables (default)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="default 8192")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="sequences per generate call (default 64)")
    p.add_argument("--limit", type=int, help="first N problems of each file")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="parameter dtype (default float32)")
    p.add_argument("--decode-attention", dest="decode_attention", choices=("auto", "xla", "pallas"),
                   help="one-token attention of the sampler: auto (default: tipjax's Pallas kernel on Hopper GPUs "
                        "where it fits), xla, or pallas")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--keep-samples", dest="keep_samples", action="store_const", const=True,
                   help="store every response text in the report")
    return p


def parse_args(argv: Sequence[str]) -> EvalConfig:
    """Command line -> EvalConfig: the --config file (if any), its overrides, then explicit flags."""
    spec, overrides, rest = config_loader.split_config_args(argv)
    if overrides and not spec:
        raise config_loader.ConfigError(f"{overrides[0]} needs --config=FILE")
    cfg = config_loader.to_dataclass(config_loader.load_config(spec, overrides), EvalConfig) if spec else EvalConfig()
    flags = {k: v for k, v in vars(_parser().parse_args(rest)).items() if v is not None}
    if "data" in flags:
        flags["data"], flags["data_dir"] = tuple(flags["data"]), ""
    return dataclasses.replace(cfg, **flags)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    report = run(cfg)
    print(format_table(report))
    if cfg.out:
        print(f"report: {cfg.out}")
    return report


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
