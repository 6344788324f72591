"""`python -m tipjax.train --config=configs/x.py[:variant] [--config.a.b=v ...] --workdir=DIR [--dry_run]`

On-policy distillation with TIP token selection. Every step is one compiled program (tipjax.step): the
student samples rollouts, the frozen teacher scores every response position, and the student is updated
on the positions the selection rule keeps. The driver below only moves prompts in and metrics out.

Multi-host (TPU pod slice, multi-node GPU): start the same command on every host; `--multihost` calls
`jax.distributed.initialize()` (automatic on TPU pods and SLURM/Open MPI clusters; elsewhere give
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`), each host loads only its own parameter
shards and its slice of the prompts. See docs/training.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging as absl_logging

from tipjax import build, cli, models, teacher_context, tokenization
from tipjax import step as step_lib
from tipjax.config_checks import validate
from tipjax.config_schema import teacher_source

log = logging.getLogger("tipjax.train")


def parse_args(argv):
    from tipjax import config_loader

    spec, overrides, rest = config_loader.split_config_args(argv)
    parser = cli.ArgumentParser(prog="python -m tipjax.train", description=__doc__.split("\n")[2])
    parser.add_argument("--workdir", help="checkpoints, metrics.jsonl, TensorBoard events, exported config")
    parser.add_argument("--dry_run", action="store_true",
                        help="AOT-compile the step for the configured mesh and print memory, then exit")
    parser.add_argument("--devices", type=int, default=0,
                        help="with --dry_run on CPU: fake this many devices (the target device count)")
    parser.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() first")
    parser.add_argument("--coordinator_address", help="with --multihost: host:port of process 0 (else detected: "
                                                       "TPU pods, SLURM, Open MPI)")
    parser.add_argument("--num_processes", type=int, help="with --multihost: the number of processes")
    parser.add_argument("--process_id", type=int, help="with --multihost: this process's index")
    parser.add_argument("--max_steps", type=int, default=0, help="stop after this many steps in this process")
    parser.add_argument("--resume_step", type=int, default=None,
                        help="resume from this checkpoint step instead of the newest good one")
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config=configs/x.py[:variant] is required")
    if not args.dry_run and not args.workdir:
        parser.error("--workdir is required (except with --dry_run)")
    if args.max_steps < 0 or args.devices < 0:
        parser.error("--max_steps and --devices must be >= 0")
    return spec, overrides, args


# --- set-up: config, mesh, models -----------------------------------------------------------------------

def load_train_config(spec: str, overrides):
    from tipjax import config_loader
    from tipjax.config_schema import TrainConfig

    return config_loader.to_dataclass(config_loader.load_config(spec, overrides), TrainConfig)


@dataclasses.dataclass
class Setup:
    """What the loop, the dry run and the tests need from start-up."""

    mesh: object
    student: object
    teacher: object
    tokenizer: object
    step_fn: object
    rollout_fn: object
    optimization: build.Optimization
    batch_sharding: object
    eos_ids: tuple
    settings: step_lib.StepSettings | None = None  # the step's static settings (benchmarks build its parts)

    @property
    def init_fn(self):
        return self.optimization.init_fn

    @property
    def state_shardings(self):
        return self.optimization.state_shardings

    def abstract_state(self):
        return self.optimization.abstract_state()


def rollout_stop_ids(cfg, tokenizer, student_config) -> tuple[int, ...]:
    """rollout.eos_token_id when set, else the student folder's stop ids (the same policy as tipjax.eval)."""
    if cfg.rollout.eos_token_id:
        return tuple(int(e) for e in cfg.rollout.eos_token_id)
    return tokenization.stop_ids(cfg.student.path, tokenizer, student_config.eos_token_id)


def teacher_model_spec(cfg):
    """The ModelSpec the teacher is built from: its own, or for "student_initial" the student's (the same path or
    the same random init, so a resumed run recomputes the identical frozen copy); None for "student"."""
    source = teacher_source(cfg)
    return {"model": cfg.teacher, "student_initial": cfg.student, "student": None}[source]


def setup(cfg, *, abstract: bool = False) -> Setup:
    mesh = build.mesh_for(cfg.mesh, jax.device_count())
    # Tokenizers and vocabularies first: a mismatch is an error before any weights load or compile.
    student_tok = tokenization.load_tokenizer(cfg.data.tokenizer or cfg.student.path)
    t_spec = teacher_model_spec(cfg)
    s_cfg = build.model_config(cfg.student, "student")
    if t_spec is cfg.teacher:
        tokenization.check_tokenizers(student_tok, tokenization.load_tokenizer(cfg.teacher.path))
        t_cfg = build.model_config(cfg.teacher, "teacher")
    else:
        t_cfg = s_cfg
    vocab = tokenization.shared_vocab(s_cfg.vocab_size, t_cfg.vocab_size, student_tok, shapes_only=abstract)
    eos = rollout_stop_ids(cfg, student_tok, s_cfg)
    student = build.model(cfg.student, mesh, abstract=abstract, name="student")
    teacher = None if t_spec is None else build.model(t_spec, mesh, abstract=abstract, name="teacher")

    opt = build.Optimization(cfg.optim, cfg.total_steps, student, mesh)
    sampling_shardings = None
    if mesh.devices.size > 1:
        sampling_shardings = models.model_shardings(student, mesh, models.SAMPLING_RULES)
    settings = step_lib.StepSettings(rollout=cfg.rollout, selection=cfg.selection, eos_ids=eos, vocab=vocab,
                                     micro_batches=cfg.micro_batches, sampling_shardings=sampling_shardings,
                                     param_shardings=opt.state_shardings.model,
                                     split_sharding=build.split_sharding(mesh),
                                     teacher_source=teacher_source(cfg), total_steps=cfg.total_steps)
    batch = models.batch_sharding(mesh)
    # With teacher-only context the step also takes the teacher's prompt ids and mask (its own width).
    prompts = (batch,) * (4 if teacher_context.from_spec(cfg.data) else 2)
    teacher_shardings = None if teacher is None else models.model_shardings(teacher, mesh)
    step_fn = jax.jit(step_lib.build_step(settings, opt.optimizer, opt.schedule),
                      in_shardings=(opt.state_shardings, teacher_shardings, *prompts),
                      out_shardings=(opt.state_shardings, None), donate_argnums=(0,))
    rollout_fn = jax.jit(step_lib.build_rollout(settings), in_shardings=(opt.state_shardings, batch, batch))
    return Setup(mesh, student, teacher, student_tok, step_fn, rollout_fn, opt, batch, eos, settings)


# --- dry run -------------------------------------------------------------------------------------------

def dry_run(cfg) -> dict:
    """AOT-compiles the step on abstract inputs: parameter counts, per-device memory, main shardings."""
    s = setup(cfg, abstract=True)
    abstract_state = s.abstract_state()
    prompts = jax.ShapeDtypeStruct((cfg.prompts_per_step, cfg.data.max_prompt_length), jnp.int32,
                                   sharding=s.batch_sharding)
    args = [prompts, prompts]
    context = teacher_context.from_spec(cfg.data)
    if context is not None:
        args += [jax.ShapeDtypeStruct((cfg.prompts_per_step, context.max_prompt_length), jnp.int32,
                                      sharding=s.batch_sharding)] * 2
    t0 = time.perf_counter()
    with jax.set_mesh(s.mesh):  # as in train(): the program a run compiles
        compiled = s.step_fn.lower(abstract_state, s.teacher, *args).compile()
    mem = compiled.memory_analysis()
    gib = 2.0**30
    report = {
        "devices": int(s.mesh.devices.size), "mesh": dict(s.mesh.shape),
        "student_params": models.param_count(s.student),
        "teacher_params": 0 if s.teacher is None else models.param_count(s.teacher),
        "compile_s": round(time.perf_counter() - t0, 1),
        "per_device_gib": {
            "arguments": mem.argument_size_in_bytes / gib, "outputs": mem.output_size_in_bytes / gib,
            "temporaries": mem.temp_size_in_bytes / gib, "aliased": mem.alias_size_in_bytes / gib,
            "peak_estimate": (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                              + mem.temp_size_in_bytes) / gib},
        "shardings": {
            "student.embed": str(s.student.embed.sharding.spec), "student.blocks.wq": str(s.student.blocks.wq.sharding.spec),
            "student.blocks.w_down": str(s.student.blocks.w_down.sharding.spec),
            "teacher.embed": str((s.teacher or s.student).embed.sharding.spec), "prompts": str(s.batch_sharding.spec)},
    }
    if teacher_source(cfg) != "model":
        report["self_distillation"] = self_distillation_memory(cfg, s)
    print(json.dumps(report, indent=2))
    return report


def self_distillation_memory(cfg, s: Setup) -> dict:
    """What self-distillation saves per device against a separate teacher of the student's size (stored with the
    teacher.* dtype and sharded like a teacher): all of it for "student", nothing for "student_initial" (a frozen
    copy is a teacher's worth of weights)."""
    spec = dataclasses.replace(cfg.student, param_dtype=cfg.teacher.param_dtype)
    separate = build.model(spec, s.mesh, abstract=True, name="teacher")
    per_device = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(separate))
    saved = per_device if teacher_source(cfg) == "student" else 0
    return {"teacher.source": teacher_source(cfg), "separate_teacher_gib_per_device": per_device / 2.0**30,
            "saved_gib_per_device": saved / 2.0**30}


# --- the training loop -----------------------------------------------------------------------------------

def run_identity(cfg) -> dict:
    """What a workdir's checkpoints belong to: resuming it under a config that changes these is an error."""
    def model(spec):
        return {"path": spec.path, "preset": spec.preset, "arch": spec.arch, "init_seed": spec.init_seed}

    return {"student": model(cfg.student), "teacher": model(cfg.teacher), "data.source": cfg.data.source,
            "selection.rule": cfg.selection.rule, "selection.ratio": cfg.selection.ratio,
            "selection.divergence": cfg.selection.divergence, "prompts_per_step": cfg.prompts_per_step,
            "rollout.samples_per_prompt": cfg.rollout.samples_per_prompt, **_context_identity(cfg)}


def _context_identity(cfg) -> dict:
    """Self-distillation and teacher-only context are part of a run's identity; absent at their defaults, so the
    workdirs of runs without them keep resuming."""
    out = {} if teacher_source(cfg) == "model" else {"teacher.source": teacher_source(cfg)}
    context = teacher_context.from_spec(cfg.data)
    if context is not None:
        out["data.teacher_context"] = dataclasses.asdict(context)
    return out


def logprob_gap_limit(compute_dtype: str, kv_cache_dtype: str = "") -> float:
    """The mean |trainer - sampler| log-probability gap above which the trainer warns (docs/training.md): measured
    ~1e-6 in float32 and ~5e-4 in bfloat16 on the tiny config, so 100x and 20x margins; with a float8 rollout
    KV cache the sampler attends over rounded keys and values: 0.08-0.11 there, so 0.25."""
    if kv_cache_dtype.startswith("float8"):
        return 0.25
    return 1e-4 if compute_dtype == "float32" else 1e-2


def train(cfg, workdir: str | Path, *, max_steps: int = 0, resume_step: int | None = None) -> dict:
    from tipjax import checkpoint as ckpt_lib, config_schema, loop, metrics_log, prompt_source, workdir as workdir_lib

    cfg = prepare(cfg)
    validate(cfg, prepared=True)
    workdir = Path(workdir)
    loop.check_identity(workdir, run_identity(cfg), resume=cfg.resume)
    context = teacher_context.from_spec(cfg.data)
    if context is not None:  # a row without a template field is an error before any model loads
        teacher_context.check_rows(cfg.data.source, context)
    s = setup(cfg)
    primary = jax.process_index() == 0
    local_prompts = cfg.prompts_per_step // jax.process_count()
    source = prompt_source.make_prompt_source(cfg.data, local_prompts, tokenizer=s.tokenizer,
                                              vocab_size=s.student.config.vocab_size, avoid_ids=s.eos_ids)

    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = ckpt_lib.Checkpointer(workdir / workdir_lib.CHECKPOINTS, cfg.checkpoint)
    state, prompt_state, restored = loop.restore_or_init(
        checkpoints, s.abstract_state(), lambda: s.init_fn(s.student, jax.random.PRNGKey(cfg.seed)),
        step=resume_step)
    if prompt_state is not None:
        source.set_state(prompt_state)
    if primary:  # only now: a failed restore must not leave metadata of another run behind
        loop.write_metadata(workdir, {
            "config.txt": config_schema.describe(cfg) + "\n",
            workdir_lib.STUDENT_CONFIG: json.dumps(s.student.config.to_hf_dict(), indent=1),
            workdir_lib.RUN_FILE: json.dumps({"student_path": cfg.student.path, "identity": run_identity(cfg)})})
    del s.student  # the state owns the student's parameters from here on

    sinks = []
    if cfg.log.wandb_project and primary:
        from tipjax import wandb_log  # imports wandb: only when asked for

        sinks.append(wandb_log.WandbSink(cfg.log, workdir, config=dataclasses.asdict(cfg)))
    logbook = metrics_log.MetricsLog(workdir, enabled=primary, resume_step=restored or 0, sinks=sinks)
    if cfg.eval.at_start and restored is None:  # the untrained student, as step 0 of metrics.jsonl
        logbook.write(0, periodic_eval(cfg, state.model, s))
    start = int(state.step)
    end = cfg.total_steps if not max_steps else min(cfg.total_steps, start + max_steps)
    rollout_compiled = []

    def device_batch(batch):
        return tuple(jax.make_array_from_process_local_data(s.batch_sharding, batch[k])
                     for k in prompt_source.STEP_KEYS if k in batch)

    def step_fn(state, batch):
        return s.step_fn(state, s.teacher, *device_batch(batch))

    def time_rollout(step, state, batch):
        if not cfg.timing_every or step % cfg.timing_every:
            return {}
        ids, mask = device_batch(batch)[:2]  # the rollout alone, on the same prompts and rng as the step
        if not rollout_compiled:
            jax.block_until_ready(s.rollout_fn(state, ids, mask))
            rollout_compiled.append(True)
        t0 = time.perf_counter()
        jax.block_until_ready(s.rollout_fn(state, ids, mask))
        return {"rollout_seconds": time.perf_counter() - t0}

    def evaluate(step, state):
        if (cfg.eval.every and step % cfg.eval.every == 0) or (cfg.eval.at_start and step == cfg.total_steps):
            return periodic_eval(cfg, state.model, s)
        return {}

    warned = []

    def watch(metrics):
        limit = logprob_gap_limit(cfg.student.compute_dtype, cfg.rollout.kv_cache_dtype)
        if not warned and metrics.get("logprob_gap_mean", 0.0) > limit:
            warned.append(True)
            setting = cfg.student.compute_dtype + (f", {cfg.rollout.kv_cache_dtype} KV cache"
                                                   if cfg.rollout.kv_cache_dtype else "")
            log.warning("the trainer's log-probabilities of sampled tokens differ from the sampler's by %.3g on "
                        "average (max %.3g; expected below %.3g in %s): rollout and update disagree",
                        metrics["logprob_gap_mean"], metrics["logprob_gap_max"], limit, setting)

    try:  # the run's mesh as the context mesh: kernels that shard themselves (splash attention) read it
        with jax.set_mesh(s.mesh):
            _, last = loop.run_steps(state, step_fn, source, start=start, end=end, total=cfg.total_steps,
                                     checkpoints=checkpoints, logbook=logbook, source_state=source.get_state,
                                     max_skipped=cfg.optim.max_skipped, token_key="response_tokens",
                                     before_step=time_rollout, after_step=evaluate, watch=watch)
    finally:
        checkpoints.close()
        logbook.close()
    if cfg.eval.at_start and end == cfg.total_steps and primary:
        report = eval_report(workdir)
        for sink in sinks:
            sink.eval_report(report)
    for sink in sinks:
        sink.close()
    return last


def prepare(cfg):
    """Runs cfg.prepare ("module:function", cfg -> cfg), which builds what the config names (e.g. tipjax.demo)."""
    if not cfg.prepare:
        return cfg
    import importlib

    module, _, name = cfg.prepare.partition(":")
    return getattr(importlib.import_module(module), name)(cfg)


def eval_report(workdir: Path) -> dict:
    """Accuracy before (step 0) and after (the last step) training, per eval set: eval_report.json + printed."""
    from tipjax import loop
    from tipjax.metrics_log import read_metrics

    rows = read_metrics(workdir)
    before, after = rows[0], rows[-1]
    report = {}
    for key in sorted(before):
        if key.startswith("eval/") and key.endswith("/mean_at_n") and key in after:
            name, se = key.split("/")[1], key + "_se"
            report[name] = {"before": before[key], "before_se": before.get(se), "after": after[key],
                            "after_se": after.get(se), "change": after[key] - before[key],
                            "before_step": before["step"], "after_step": after["step"]}
            print(f"{name}: mean@n {before[key]:.1%} ± {before.get(se, 0):.1%} (step {before['step']}) -> "
                  f"{after[key]:.1%} ± {after.get(se, 0):.1%} (step {after['step']}): "
                  f"{100 * (after[key] - before[key]):+.1f} points")
    loop.write_metadata(workdir, {"eval_report.json": json.dumps(report, indent=1) + "\n"})
    return report


def eval_paths(cfg) -> list[Path]:
    """eval.datasets: absolute, relative to the working directory, or names in ../shared/data beside the repo."""
    from tipjax import data

    return [data.resolve_data_path(d) for d in cfg.eval.datasets]


def periodic_eval(cfg, student, s: Setup) -> dict:
    """mean@n and pass@n of the current student on each eval.datasets file, through tipjax.eval."""
    from tipjax import data, eval as tev

    # The instruction and template flag the student is trained with; fields and lengths are the eval sets' own.
    options = data.PromptOptions(instruction=cfg.data.instruction, enable_thinking=cfg.data.enable_thinking)
    out = {}
    for path in eval_paths(cfg):
        report = tev.evaluate(student, s.tokenizer, path, n=cfg.eval.samples, temperature=cfg.eval.temperature,
                              top_p=cfg.eval.top_p, max_new_tokens=cfg.eval.max_new_tokens,
                              batch_size=cfg.eval.batch_size, limit=cfg.eval.limit or None,
                              eos_token_ids=s.eos_ids, prompt_options=options,
                              progress=False)
        name = data.dataset_name(path)
        out[f"eval/{name}/mean_at_n"] = report["mean_at_n"]
        out[f"eval/{name}/mean_at_n_se"] = report["mean_at_n_se"]
        out[f"eval/{name}/pass_at_n"] = report["pass_at_n"]
        out[f"eval/{name}/response_length"] = report["mean_response_length"]
    return out


def check_batch_split(cfg, n_devices: int, n_processes: int = 1) -> None:
    """prompts_per_step must split evenly over the processes and over the mesh's batch axes (data x fsdp)."""
    from tipjax.config_loader import ConfigError

    m = cfg.mesh
    split = (m.data if m.data > 0 else max(n_devices // (m.fsdp * m.tensor), 1)) * m.fsdp
    if cfg.prompts_per_step % split or cfg.prompts_per_step % n_processes:
        raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} must be a multiple of the {split} mesh devices "
                          f"the batch is split over (mesh.data x mesh.fsdp on {n_devices} devices, "
                          f"{n_processes} process(es)); set prompts_per_step or mesh.data")


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save step at INFO
    spec, overrides, args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_train_config(spec, overrides)  # no JAX backend is touched yet: device flags can still change
    validate(cfg, dry_run=args.dry_run)
    if not args.dry_run and not cfg.prepare and cfg.data.source != "synthetic":
        from tipjax import data

        for _ in data.read_rows(cfg.data.source):  # every row parses (file:line errors) before models load
            pass
    devices = args.devices or (build.devices_needed(cfg.mesh) if args.dry_run else 0)
    if devices > 1:  # a dry run on a CPU fakes the devices its mesh needs
        jax.config.update("jax_num_cpu_devices", devices)
    explicit = dict(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                    process_id=args.process_id)
    if not args.multihost and any(v is not None for v in explicit.values()):
        raise cli.UsageError("--coordinator_address, --num_processes and --process_id need --multihost")
    if args.multihost:
        jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})
    check_batch_split(cfg, jax.device_count(), jax.process_count())
    if jax.process_index() == 0:
        from tipjax.config_schema import describe

        print(describe(cfg))
    if args.dry_run:
        dry_run(prepare(cfg))
        return
    final = train(cfg, args.workdir, max_steps=args.max_steps, resume_step=args.resume_step)
    print(json.dumps({k: round(v, 5) for k, v in final.items()}))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
