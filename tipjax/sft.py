"""`python -m tipjax.sft --config=configs/sft_x.py[:variant] [--config.a.b=v ...] --workdir=DIR [--max_steps N]`

Supervised warm start: teacher-forced cross-entropy on the response tokens of (prompt, gold response) pairs,
built from the OPD trainer's parts (tipjax.build, tipjax.optim, tipjax.loop), so a run has the same decoder,
optimizer, checkpoints, metrics.jsonl, workdir identity check, export (`python -m tipjax.export --workdir DIR`)
and evaluation (`python -m tipjax.eval --model DIR`) as an OPD run. One step is one compiled program
(jax.jit with shardings, the state donated).

The loss is the mean over every response token of the batch (response + eos, explicit mask), however the
batch is split into micro-batches. The [rows, Tr, V] logits of a micro-batch are materialised: for a large
vocabulary, raise micro_batches.

The student starts from a random init (student.arch / student.preset) or a Hugging Face folder (student.path).
A random-init student on a built-in task gets the task's tokenizer written into DIR/tokenizer, which run.json
names, so export and eval find it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from tipjax import build, cli, models, optim, sft_data, tasks, tokenization
from tipjax import step as step_lib
from tipjax.config_checks import validate_sft
from tipjax.config_schema import SFTConfig, describe

log = logging.getLogger("tipjax.sft")


def load_config(spec: str, overrides=()) -> SFTConfig:
    from tipjax import config_loader

    return config_loader.to_dataclass(config_loader.load_config(spec, overrides), SFTConfig)


# --- the step ---------------------------------------------------------------------------------------------

def token_loss(params, part, _=None):
    """Summed cross-entropy of one micro-batch's response tokens, and their count (accumulate's weight).

    part: tokens [b, Tp + Tr], seq_mask [b, Tp + Tr], loss_mask [b, Tr]; hidden state t predicts token t + 1.
    """
    tokens, seq_mask, loss_mask = part["tokens"], part["seq_mask"], part["loss_mask"]
    prompt_len = tokens.shape[1] - loss_mask.shape[1]
    logits = params.logits(step_lib.response_hidden(params, tokens, seq_mask, prompt_len))  # [b, Tr, V] fp32
    targets = tokens[:, prompt_len:]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mask = loss_mask.astype(jnp.float32)
    n = jnp.sum(mask)
    hits = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * mask)
    return jnp.sum(nll * mask), ({"n_correct": hits}, n)


def build_step(optimizer, schedule, *, micro_batches: int = 1, split_sharding=None, param_shardings=None):
    """`step(state, tokens, seq_mask, loss_mask) -> (state, metrics)`: accumulate (token-count weights) + update."""

    def step(state: optim.TrainState, tokens, seq_mask, loss_mask):
        batch = dict(tokens=tokens, seq_mask=seq_mask, loss_mask=loss_mask)
        loss, grads, parts, n = optim.accumulate(token_loss, state.model, batch, micro_batches,
                                                 split_sharding=split_sharding, param_shardings=param_shardings)
        rng, _ = jax.random.split(state.rng)
        new_state, metrics = optim.apply_update(state, loss, grads, optimizer, schedule, rng=rng)
        metrics.update(response_tokens=n, token_accuracy=jnp.sum(parts["n_correct"]) / jnp.maximum(n, 1.0))
        return new_state, metrics

    return step


# --- set-up ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Setup:
    mesh: object
    student: object
    tokenizer: object
    tokenizer_dir: str | None       # the folder run.json names; None: written into the workdir by train()
    step_fn: object
    optimization: build.Optimization
    batch_sharding: object
    eos_ids: tuple


def load_tokenizer(cfg: SFTConfig):
    """(tokenizer, its folder or None for a task tokenizer not yet saved): tokenizer, else student.path, else task."""
    folder = cfg.tokenizer or cfg.student.path
    if folder is not None:
        tokenizer = tokenization.load_tokenizer(folder)
        if tokenizer is None:
            raise FileNotFoundError(f"{folder}: no tokenizer files (set tokenizer=<HF folder>)")
        return tokenizer, folder
    return tasks.get(cfg.data.task).tokenizer(), None


def setup(cfg: SFTConfig) -> Setup:
    mesh = build.mesh_for(cfg.mesh, jax.device_count())
    tokenizer, tokenizer_dir = load_tokenizer(cfg)
    config = build.model_config(cfg.student, "student")
    if len(tokenizer) > config.vocab_size:
        raise tokenization.IncompatibleModels(f"the tokenizer has {len(tokenizer)} tokens but the student's embedding "
                                        f"table {config.vocab_size} rows")
    student = build.model(cfg.student, mesh, abstract=False, name="student")
    opt = build.Optimization(cfg.optim, cfg.total_steps, student, mesh)
    batch = models.batch_sharding(mesh)
    step = build_step(opt.optimizer, opt.schedule, micro_batches=cfg.micro_batches,
                      split_sharding=build.split_sharding(mesh), param_shardings=opt.state_shardings.model)
    step_fn = jax.jit(step, in_shardings=(opt.state_shardings, batch, batch, batch),
                      out_shardings=(opt.state_shardings, None), donate_argnums=(0,))
    eos = tokenization.stop_ids(tokenizer_dir or cfg.student.path, tokenizer, config.eos_token_id)
    return Setup(mesh, student, tokenizer, tokenizer_dir, step_fn, opt, batch, eos)


def run_identity(cfg: SFTConfig) -> dict:
    """What a workdir's checkpoints belong to (see tipjax.loop.check_identity)."""
    s = cfg.student
    return {"kind": "sft", "student": {"path": s.path, "preset": s.preset, "arch": s.arch, "init_seed": s.init_seed},
            "data": dataclasses.asdict(cfg.data), "batch_size": cfg.batch_size}


# --- the training loop -------------------------------------------------------------------------------------

def train(cfg: SFTConfig, workdir: str | Path, *, max_steps: int = 0, resume_step: int | None = None) -> dict:
    from tipjax import checkpoint as ckpt_lib, loop, metrics_log, train as opd, workdir as workdir_lib

    validate_sft(cfg)
    workdir = Path(workdir)
    loop.check_identity(workdir, run_identity(cfg), resume=cfg.resume)
    s = setup(cfg)
    sft_set = sft_data.tokenize(sft_data.pairs(cfg.data), s.tokenizer, cfg.data)
    batches = sft_data.SFTBatches(sft_set, cfg.batch_size, cfg.data.seed)
    log.info("SFT data: %d pairs (%d skipped as too long), %d batches per epoch", len(sft_set), sft_set.n_skipped,
             batches.per_epoch)

    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = ckpt_lib.Checkpointer(workdir / workdir_lib.CHECKPOINTS, cfg.checkpoint)
    state, batch_state, restored = loop.restore_or_init(
        checkpoints, s.optimization.abstract_state(),
        lambda: s.optimization.init_fn(s.student, jax.random.PRNGKey(cfg.seed)), step=resume_step)
    if batch_state is not None:
        batches.set_state(batch_state)
    tokenizer_dir = s.tokenizer_dir
    primary = jax.process_index() == 0
    if tokenizer_dir is None:  # a random-init student on a task: its tokenizer travels with the run
        tokenizer_dir = str((workdir / "tokenizer").absolute())
        if primary:
            tasks.get(cfg.data.task).save_tokenizer(tokenizer_dir)
    if primary:
        loop.write_metadata(workdir, {
            "config.txt": describe(cfg) + "\n",
            workdir_lib.STUDENT_CONFIG: json.dumps(s.student.config.to_hf_dict(), indent=1),
            workdir_lib.RUN_FILE: json.dumps({"student_path": tokenizer_dir, "identity": run_identity(cfg)})})
    del s.student  # the state owns the parameters from here on

    logbook = metrics_log.MetricsLog(workdir, enabled=primary, resume_step=restored or 0)
    start = int(state.step)
    end = cfg.total_steps if not max_steps else min(cfg.total_steps, start + max_steps)

    def step_fn(state, batch):
        arrays = (jax.make_array_from_process_local_data(s.batch_sharding, batch[k])
                  for k in ("tokens", "seq_mask", "loss_mask"))
        return s.step_fn(state, *arrays)

    def evaluate(step, state):
        if cfg.eval.every and (step % cfg.eval.every == 0 or step == end):
            return opd.periodic_eval(cfg, state.model, s)
        return {}

    try:  # the run's mesh as the context mesh, as in tipjax.train
        with jax.set_mesh(s.mesh):
            _, last = loop.run_steps(state, step_fn, batches, start=start, end=end, total=cfg.total_steps,
                                     checkpoints=checkpoints, logbook=logbook, source_state=batches.get_state,
                                     max_skipped=cfg.optim.max_skipped, token_key="response_tokens",
                                     after_step=evaluate)
    finally:
        checkpoints.close()
        logbook.close()
    return last


def _command(argv: list[str]) -> None:
    from tipjax import config_loader

    spec, overrides, rest = config_loader.split_config_args(argv)
    parser = cli.ArgumentParser(prog="python -m tipjax.sft", description=__doc__.split("\n")[2])
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, run.json, tokenizer/")
    parser.add_argument("--max_steps", type=int, default=0, help="stop after this many steps in this process")
    parser.add_argument("--resume_step", type=int, default=None, help="resume from this checkpoint step")
    args = parser.parse_args(rest)
    if spec is None:
        raise cli.UsageError("no config", "--config", "pass --config=configs/sft_x.py[:variant]")
    cfg = load_config(spec, overrides)
    validate_sft(cfg)
    if cfg.data.source:  # every row parses (file:line errors) before the model loads
        for _ in sft_data.pairs(cfg.data):
            pass
    print(describe(cfg))
    final = train(cfg, args.workdir, max_steps=args.max_steps, resume_step=args.resume_step)
    print(json.dumps({k: round(v, 5) for k, v in final.items()}))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    return cli.run_main(_command, argv)


if __name__ == "__main__":
    sys.exit(main())
