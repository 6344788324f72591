"""`python -m tipjax.train --config=configs/x.py[:variant] [--config.a.b=v ...] --workdir=DIR [--dry_run]`

On-policy distillation with TIP token selection. Every step is one compiled program (tipjax.step): the
student samples rollouts, the frozen teacher scores every response position, and the student is updated
on the positions the selection rule keeps. The driver below only moves prompts in and metrics out.

Multi-host (TPU pod slice, multi-node GPU): start the same command on every host; `--multihost` calls
`jax.distributed.initialize()` (automatic on TPU pods and SLURM/Open MPI clusters), each host loads only
its own parameter shards and its slice of the prompts. See docs/training.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging

log = logging.getLogger("tipjax.train")


def parse_args(argv):
    from tipjax import config as tcfg

    spec, overrides, rest = tcfg.split_config_args(argv)
    parser = argparse.ArgumentParser(prog="python -m tipjax.train", description=__doc__.split("\n")[2])
    parser.add_argument("--workdir", help="checkpoints, metrics.jsonl, TensorBoard events, exported config")
    parser.add_argument("--dry_run", action="store_true",
                        help="AOT-compile the step for the configured mesh and print memory, then exit")
    parser.add_argument("--devices", type=int, default=0,
                        help="with --dry_run on CPU: fake this many devices (the target device count)")
    parser.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() first")
    parser.add_argument("--max_steps", type=int, default=0, help="stop after this many steps in this process")
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config=configs/x.py[:variant] is required")
    if not args.dry_run and not args.workdir:
        parser.error("--workdir is required (except with --dry_run)")
    return spec, overrides, args


# --- set-up: config, mesh, models -----------------------------------------------------------------------

def load_train_config(spec: str, overrides):
    from tipjax import config as tcfg
    from tipjax.train_config import TrainConfig

    return tcfg.to_dataclass(tcfg.load_config(spec, overrides), TrainConfig)


def validate(cfg) -> None:
    """Bad settings fail here, with the key's name, before any model is loaded or compiled."""
    from tipjax import selection

    sel = cfg.selection
    if not 0.0 < sel.ratio <= 1.0:
        raise ValueError(f"selection.ratio must be in (0, 1], got {sel.ratio}")
    if sel.rule not in selection.RULES:
        raise ValueError(f"selection.rule {sel.rule!r} is unknown; choose one of {list(selection.RULES)}")
    if sel.divergence not in selection.DIVERGENCES:
        raise ValueError(f"selection.divergence {sel.divergence!r} is unknown; choose one of "
                         f"{list(selection.DIVERGENCES)}")
    selection.SelectionOptions(**sel.options)
    rows = cfg.prompts_per_step * cfg.rollout.samples_per_prompt
    if rows % cfg.rollout.groups:
        raise ValueError(f"rollout.groups={cfg.rollout.groups} must divide prompts_per_step * samples_per_prompt = {rows}")
    if rows % cfg.micro_batches:
        raise ValueError(f"micro_batches={cfg.micro_batches} must divide prompts_per_step * samples_per_prompt = {rows}")
    if cfg.eval.every:
        missing = [str(p) for p in eval_paths(cfg) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"eval.datasets not found: {missing}")
    for name in ("student", "teacher"):
        spec = getattr(cfg, name)
        if (spec.path is not None or spec.preset is not None) + (spec.arch is not None) != 1:
            raise ValueError(f"{name}: set {name}.path (optionally with {name}.preset, checked against it), "
                             f"{name}.preset or {name}.arch")
        if spec.path is not None and not (Path(spec.path) / "config.json").is_file():
            raise FileNotFoundError(f"{name}.path={spec.path!r}: no config.json there (a local Hugging Face folder "
                                    f"is required; hub downloads are not done)")


def make_mesh(spec, n_devices: int):
    from tipjax import models

    data = spec.data if spec.data > 0 else n_devices // (spec.fsdp * spec.tensor)
    if not 0 < data * spec.fsdp * spec.tensor <= n_devices:
        raise ValueError(f"mesh data={data} x fsdp={spec.fsdp} x tensor={spec.tensor} needs more than the "
                         f"{n_devices} devices")
    return models.make_mesh(data=data, fsdp=spec.fsdp, tensor=spec.tensor)


def model_config(spec):
    from tipjax import models

    dtypes = dict(param_dtype=spec.param_dtype, compute_dtype=spec.compute_dtype, remat=spec.remat)
    if spec.preset is not None and spec.preset not in models.PRESETS:
        raise ValueError(f"unknown preset {spec.preset!r}; known: {sorted(models.PRESETS)}")
    if spec.path is not None:
        hf = json.loads((Path(spec.path) / "config.json").read_text())
        cfg = models.ModelConfig.from_hf_dict(hf, source_dir=spec.path, **dtypes)
        if spec.preset is not None:
            _check_against_preset(cfg, models.PRESETS[spec.preset], spec)
        return cfg
    if spec.preset is not None:
        return models.PRESETS[spec.preset].replace(**dtypes)
    return models.ModelConfig.from_hf_dict(dict(spec.arch), **dtypes)


def _check_against_preset(cfg, preset, spec) -> None:
    """A config file names the pair it was written for; a folder of another shape is a mistake, not a variant."""
    for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size"):
        if getattr(cfg, field) != getattr(preset, field):
            raise ValueError(f"{spec.path}: {field}={getattr(cfg, field)} but the config's preset {spec.preset!r} has "
                             f"{getattr(preset, field)}; fix the path or set the preset to None")


def build_model(spec, mesh, *, abstract: bool):
    """The model placed on the mesh with the storage rules (abstract: ShapeDtypeStructs with shardings)."""
    from tipjax import models

    cfg = model_config(spec)
    if abstract:
        shapes = models.abstract(cfg)
        shardings = models.model_shardings(shapes, mesh, models.STORAGE_RULES)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    if spec.path is not None:
        return models.load_hf(spec.path, dtype=cfg.param_dtype, compute_dtype=cfg.compute_dtype, mesh=mesh,
                              rules=models.STORAGE_RULES, remat=cfg.remat)
    return models.init(cfg, jax.random.PRNGKey(spec.init_seed), mesh=mesh, rules=models.STORAGE_RULES)


@dataclasses.dataclass
class Setup:
    """What the loop, the dry run and the tests need from start-up."""

    mesh: object
    student: object
    teacher: object
    tokenizer: object
    step_fn: object
    rollout_fn: object
    init_fn: object
    state_shardings: object
    batch_sharding: object
    eos_ids: tuple

    def abstract_state(self):
        """The train state's shapes, dtypes and shardings, without allocating it (dry runs, restore targets)."""
        shapes = jax.eval_shape(self.init_fn, self.student, jax.ShapeDtypeStruct((2,), jnp.uint32))
        return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes,
                            self.state_shardings)


def setup(cfg, *, abstract: bool = False) -> Setup:
    from tipjax import compat, models, step as step_lib

    mesh = make_mesh(cfg.mesh, jax.device_count())
    # Tokenizers and vocabularies first: a mismatch is an error before any weights load or compile.
    student_tok = compat.load_tokenizer(cfg.data.tokenizer or cfg.student.path)
    compat.check_tokenizers(student_tok, compat.load_tokenizer(cfg.teacher.path))
    s_cfg, t_cfg = model_config(cfg.student), model_config(cfg.teacher)
    vocab = compat.shared_vocab(s_cfg.vocab_size, t_cfg.vocab_size, student_tok, shapes_only=abstract)
    student = build_model(cfg.student, mesh, abstract=abstract)
    teacher = build_model(cfg.teacher, mesh, abstract=abstract)

    eos = cfg.rollout.eos_token_id
    if not eos and s_cfg.eos_token_id is not None:
        eos = tuple(np.atleast_1d(s_cfg.eos_token_id))
    optimizer = step_lib.build_optimizer(cfg.optim, cfg.total_steps)
    schedule = step_lib.learning_rate_schedule(cfg.optim, cfg.total_steps)
    state_shardings = step_lib.state_shardings(student, optimizer, mesh)
    sampling_shardings = None
    if mesh.devices.size > 1:
        sampling_shardings = models.model_shardings(student, mesh, models.SAMPLING_RULES)
    settings = step_lib.StepSettings(rollout=cfg.rollout, selection=cfg.selection,
                                     eos_ids=tuple(int(e) for e in eos), vocab=vocab,
                                     micro_batches=cfg.micro_batches, sampling_shardings=sampling_shardings,
                                     param_shardings=state_shardings.params,
                                     split_sharding=jax.sharding.NamedSharding(
                                         mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"))))

    init = functools.partial(step_lib.init_state, optimizer=optimizer)
    batch = models.batch_sharding(mesh)
    step_fn = jax.jit(step_lib.build_step(settings, optimizer, schedule),
                      in_shardings=(state_shardings, models.model_shardings(teacher, mesh), batch, batch),
                      out_shardings=(state_shardings, None), donate_argnums=(0,))
    rollout_fn = jax.jit(step_lib.build_rollout(settings), in_shardings=(state_shardings, batch, batch))
    init_fn = jax.jit(init, out_shardings=state_shardings)
    return Setup(mesh, student, teacher, student_tok, step_fn, rollout_fn, init_fn, state_shardings, batch,
                 settings.eos_ids)


# --- dry run -------------------------------------------------------------------------------------------

def dry_run(cfg) -> dict:
    """AOT-compiles the step on abstract inputs: parameter counts, per-device memory, main shardings."""
    from tipjax import models

    s = setup(cfg, abstract=True)
    abstract_state = s.abstract_state()
    prompts = jax.ShapeDtypeStruct((cfg.prompts_per_step, cfg.data.max_prompt_len), jnp.int32,
                                   sharding=s.batch_sharding)
    t0 = time.perf_counter()
    compiled = s.step_fn.lower(abstract_state, s.teacher, prompts, prompts).compile()
    mem = compiled.memory_analysis()
    gib = 2.0**30
    report = {
        "devices": int(s.mesh.devices.size), "mesh": dict(s.mesh.shape),
        "student_params": models.param_count(s.student), "teacher_params": models.param_count(s.teacher),
        "compile_s": round(time.perf_counter() - t0, 1),
        "per_device_gib": {
            "arguments": mem.argument_size_in_bytes / gib, "outputs": mem.output_size_in_bytes / gib,
            "temporaries": mem.temp_size_in_bytes / gib, "aliased": mem.alias_size_in_bytes / gib,
            "peak_estimate": (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                              + mem.temp_size_in_bytes) / gib},
        "shardings": {
            "student.embed": str(s.student.embed.sharding.spec), "student.blocks.wq": str(s.student.blocks.wq.sharding.spec),
            "student.blocks.w_down": str(s.student.blocks.w_down.sharding.spec),
            "teacher.embed": str(s.teacher.embed.sharding.spec), "prompts": str(s.batch_sharding.spec)},
    }
    print(json.dumps(report, indent=2))
    return report


# --- the training loop -----------------------------------------------------------------------------------

def train(cfg, workdir: str | Path, *, max_steps: int = 0) -> dict:
    from tipjax import checkpoint as ckpt_lib, metrics_log, prompt_source, train_config
    from tqdm import tqdm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    s = setup(cfg)
    primary = jax.process_index() == 0
    if primary:
        (workdir / "config.txt").write_text(train_config.describe(cfg) + "\n")
        (workdir / "student_config.json").write_text(json.dumps(s.student.config.to_hf_dict(), indent=1))
        (workdir / "run.json").write_text(json.dumps({"student_path": cfg.student.path}))

    local_prompts = cfg.prompts_per_step // jax.process_count()
    source = prompt_source.make_prompt_source(cfg.data, local_prompts, tokenizer=s.tokenizer,
                                              vocab_size=s.student.config.vocab_size,
                                              avoid_ids=tuple(np.atleast_1d(s.student.config.eos_token_id or ())))
    checkpoints = ckpt_lib.Checkpointer(workdir / "checkpoints", cfg.checkpoint)
    if checkpoints.latest_step() is not None:
        # Restore straight into the shardings: no throwaway optimizer state is allocated first.
        state, prompt_state = checkpoints.restore(None, s.abstract_state())
        source.set_state(prompt_state)
        log.info("resumed from step %d", int(state.step))
    else:
        state = s.init_fn(s.student, jax.random.PRNGKey(cfg.seed))
    del s.student  # the state owns the student's parameters from here on

    logbook = metrics_log.MetricsLog(workdir, enabled=primary)
    start = int(state.step)
    end = cfg.total_steps if not max_steps else min(cfg.total_steps, start + max_steps)
    last = {}
    rollout_compiled = False
    bar = tqdm(range(start, end), initial=start, total=cfg.total_steps, disable=not primary, desc="train")
    for step in bar:
        batch = next(source)
        ids, mask = (jax.make_array_from_process_local_data(s.batch_sharding, batch[k])
                     for k in ("prompt_ids", "prompt_mask"))
        timing = cfg.timing_every and (step + 1) % cfg.timing_every == 0
        if timing:  # the rollout alone, on the same prompts and rng as the step below
            if not rollout_compiled:
                jax.block_until_ready(s.rollout_fn(state, ids, mask))
                rollout_compiled = True
            t0 = time.perf_counter()
            jax.block_until_ready(s.rollout_fn(state, ids, mask))
            rollout_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, metrics = s.step_fn(state, s.teacher, ids, mask)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - t0
        tokens = float(metrics["response_tokens"])
        metrics.update(step_seconds=seconds, tokens_per_s=tokens / seconds, **_peak_memory())
        if timing:
            metrics.update(rollout_tokens_per_s=tokens / rollout_seconds,
                           update_tokens_per_s=tokens / max(seconds - rollout_seconds, 1e-9))
        last = logbook.write(step + 1, metrics)
        bar.set_postfix(metrics_log.console_summary(last))
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0:
            logbook.write(step + 1, periodic_eval(cfg, state.params, s))
        if checkpoints.should_save(step + 1) or step + 1 == end:
            checkpoints.save(step + 1, state, source.get_state(), force=step + 1 == end)
    checkpoints.close()
    logbook.close()
    return last


def eval_paths(cfg) -> list[Path]:
    """eval.datasets: absolute, relative to the working directory, or names in ../shared/data beside the repo."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return [Path(d) if Path(d).is_file() else shared / d for d in cfg.eval.datasets]


def periodic_eval(cfg, student, s: Setup) -> dict:
    """mean@n and pass@n of the current student on each eval.datasets file, through tipjax.eval."""
    from tipjax import eval as tev

    out = {}
    for path in eval_paths(cfg):
        report = tev.evaluate(student, s.tokenizer, path, n=cfg.eval.samples, temperature=cfg.eval.temperature,
                              top_p=cfg.eval.top_p, max_new_tokens=cfg.eval.max_new_tokens,
                              batch_size=cfg.eval.batch_size, limit=cfg.eval.limit or None,
                              eos_token_ids=s.eos_ids, progress=False)
        name = path.stem
        out[f"eval/{name}/mean_at_n"] = report["mean_at_n"]
        out[f"eval/{name}/pass_at_n"] = report["pass_at_n"]
        out[f"eval/{name}/response_length"] = report["mean_response_length"]
    return out


def _peak_memory() -> dict:
    stats = jax.local_devices()[0].memory_stats() or {}
    return {"peak_memory_gib": stats["peak_bytes_in_use"] / 2.0**30} if "peak_bytes_in_use" in stats else {}


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save step at INFO
    spec, overrides, args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.devices:
        jax.config.update("jax_num_cpu_devices", args.devices)
    if args.multihost:
        jax.distributed.initialize()
    cfg = load_train_config(spec, overrides)
    validate(cfg)
    if jax.process_index() == 0:
        from tipjax.train_config import describe

        print(describe(cfg))
    if args.dry_run:
        dry_run(cfg)
        return
    final = train(cfg, args.workdir, max_steps=args.max_steps)
    print(json.dumps({k: round(v, 5) for k, v in final.items()}))


if __name__ == "__main__":
    main()
