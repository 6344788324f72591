"""One OPD training step as a single pure function: rollout -> teacher -> student -> TIP loss -> update.

`build_step` returns `step(state, teacher, prompt_ids, prompt_mask[, teacher_prompt_ids, teacher_prompt_mask])
-> (state, metrics)`; the trainer jits it once with explicit shardings and donates the state, so rollout,
teacher scoring and the update are one compiled program with no host round trip. Shapes: P prompts, n samples
each, B = P * n rows, Tp prompt columns (a fixed bucket), N = max_new_tokens, S = Tp + N, D model width, V the
shared vocabulary, Tt the teacher-only prompt's own bucket (tipjax.teacher_context).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tipjax import models, optim, rows, sampling, schedule, selection
from tipjax.config_schema import RolloutSpec, SelectionSpec


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Everything static about the step (hashable, so it can close over jit)."""

    rollout: RolloutSpec
    selection: SelectionSpec
    eos_ids: tuple[int, ...]
    vocab: int                     # shared real vocabulary: both heads are sliced to it
    micro_batches: int = 1
    sampling_shardings: Any = None  # student params resharded for decoding (SAMPLING_RULES), or None
    param_shardings: Any = None     # the storage shardings, pinned on the fp32 gradient accumulators
    split_sharding: Any = None      # [parts, rows, ...] arrays: rows over (data, fsdp)
    teacher_source: str = "model"   # "student": the teacher is the current student (the step's teacher arg is unused)
    total_steps: int = 0            # the length of ratio / beta schedules that give no steps of their own


def response_hidden(model, tokens, seq_mask, prompt_len):
    """Hidden states that predict the response tokens: columns Tp-1 .. S-2 of [B, S] -> [B, N, D]."""
    hidden = model.hidden(tokens, positions=models.positions_from_mask(seq_mask), attention_mask=seq_mask)
    return hidden[:, prompt_len - 1:-1]


def prefixed_response_hidden(model, prompt_ids, prompt_mask, resp_tokens, resp_mask):
    """response_hidden for rows that continue shared prompts ([P, Tp] prompts, [B, N] responses, B = P * n), each
    prompt run once for its n rows (Decoder.hidden_prefixed) -> [B, N, D]: the prompt's last column predicts a
    row's first token, the row's columns 0 .. N-2 the rest."""
    prompt_hidden, row_hidden = model.hidden_prefixed(prompt_ids, prompt_mask, resp_tokens, resp_mask)
    first = jnp.repeat(prompt_hidden[:, -1:], resp_tokens.shape[0] // prompt_ids.shape[0], axis=0)
    return jnp.concatenate([first, row_hidden[:, :-1]], axis=1)


def teacher_sequences(teacher_prompt_ids, teacher_prompt_mask, resp_tokens, resp_mask, n):
    """The teacher's own prompt [P, Tt] (repeated n times per prompt, as the rollout rows are) followed by the
    sampled responses [B, N]: tokens and mask [B, Tt + N], whose columns Tt-1 .. Tt+N-2 predict the response
    exactly as the student's columns Tp-1 .. S-2 do (response_hidden with prompt_len Tt)."""
    prompt_ids, prompt_mask = (jnp.repeat(x, n, axis=0) for x in (teacher_prompt_ids, teacher_prompt_mask))
    return (jnp.concatenate([prompt_ids, resp_tokens.astype(prompt_ids.dtype)], axis=1),
            jnp.concatenate([prompt_mask, resp_mask.astype(prompt_mask.dtype)], axis=1))


# Batch entries with one row per prompt ([P, ...]); the others have one per sampled row ([B, ...]).
_PROMPT_KEYS = ("prompt_ids", "prompt_mask", "teacher_prompt_ids", "teacher_prompt_mask")


def knobs(settings: StepSettings, step, n_new: int) -> dict:
    """The step's retention ratio, its static capacity and the divergence's beta at update `step`: Python floats
    for constant schedules (the program without schedules), traced values otherwise (tipjax.schedule)."""
    sel = settings.selection
    options = selection.SelectionOptions(**sel.options)
    return dict(ratio=schedule.value(sel.ratio_schedule, sel.ratio, settings.total_steps, step),
                capacity=schedule.ratio_capacity(sel.ratio_schedule, sel.ratio, sel.rule, n_new, options),
                beta=schedule.value(sel.beta_schedule, sel.beta, settings.total_steps, step))


def _keeps_all(settings: StepSettings, n_new: int) -> bool:
    """Static: whether every response token is kept (a scheduled ratio keeps all only under rule "all")."""
    sel = settings.selection
    scheduled = sel.ratio_schedule.kind != "constant"
    return sel.rule == "all" or (not scheduled and selection.keeps_all(sel.rule, sel.ratio, None, n_new))


def shares_prompts(roll) -> bool:
    """Whether a rollout's rows read their prompt's keys from one shared copy (RolloutSpec.share_prompt): with n > 1
    samples per prompt, in one group or in groups that divide n into more than one sample each."""
    n, groups = roll.samples_per_prompt, roll.groups
    return roll.share_prompt and n > 1 and (groups == 1 or (n % groups == 0 and n > groups))


def prompt_copies(settings: StepSettings, prompts: int) -> int:
    """How many copies of each prompt the update runs, each for n / c of its n samples (prefixed_response_hidden):
    the fewest c dividing n for which micro_batches times the row shards divides P * c, so that every micro-batch
    holds whole copies spread over the devices as the rows are. n (a copy per row) without rollout.share_prompt or
    when no c fits. Micro-batch j then holds copies j, j + m, ... with their samples (rows.split with group n / c),
    not rows j, j + m, ...; norm_scope "micro_batch" statistics are taken over those rows."""
    roll = settings.rollout
    n, whole = roll.samples_per_prompt, settings.micro_batches * rows.shards(settings.split_sharding)
    fits = [c for c in range(1, n) if n % c == 0 and prompts * c % whole == 0]
    return fits[0] if roll.share_prompt and fits else n


def update_shares_prompts(settings: StepSettings, prompts: int) -> bool:
    """Whether the update runs a prompt once for several of its samples instead of once per row (prompt_copies)."""
    return prompt_copies(settings, prompts) < settings.rollout.samples_per_prompt


def _rollout(settings: StepSettings, params, prompt_ids, prompt_mask, rng) -> sampling.SampleOutput:
    """n samples per prompt from the current student; with rollout.groups > 1 the rows are sampled in
    sequential groups (lax.map), which divides the KV cache's memory by the number of groups. The n rows of a
    prompt share its keys (rollout.share_prompt); in groups too when groups divides n (each group then draws
    n / groups samples of every prompt: the rows rows.split would give it)."""
    roll = settings.rollout
    # Decoding computes in the compute dtype anyway; a copy in that dtype halves the resharded weights (fp32 master).
    compute = jnp.dtype(params.config.compute_dtype)
    params = jax.tree.map(lambda p: p.astype(compute) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)
    if settings.sampling_shardings is not None:
        params = jax.lax.with_sharding_constraint(params, settings.sampling_shardings)
    kwargs = dict(max_new_tokens=roll.max_new_tokens, temperature=roll.temperature, top_p=roll.top_p,
                  top_k=roll.top_k, eos_token_id=settings.eos_ids or None, buckets=(prompt_ids.shape[1],),
                  cache_dtype=roll.kv_cache_dtype or None, share_prompt=roll.share_prompt)
    n = roll.samples_per_prompt
    if roll.groups == 1:
        return sampling.generate(params, prompt_ids, prompt_mask, rng=rng, num_samples=n, **kwargs)
    if shares_prompts(roll):
        out = jax.lax.map(lambda key: sampling.generate(params, prompt_ids, prompt_mask, rng=key,
                                                        num_samples=n // roll.groups, **kwargs),
                          jax.random.split(rng, roll.groups))
        return jax.tree.map(rows.merge, out)
    ids, mask = (rows.split(jnp.repeat(x, roll.samples_per_prompt, axis=0), roll.groups, settings.split_sharding)
                 for x in (prompt_ids, prompt_mask))

    def one_group(args):
        return sampling.generate(params, args[0], args[1], rng=args[2], **kwargs)

    out = jax.lax.map(one_group, (ids, mask, jax.random.split(rng, roll.groups)))
    return jax.tree.map(rows.merge, out)


def rollout_samples(settings: StepSettings, state: optim.TrainState, prompt_ids: jax.Array,
                    prompt_mask: jax.Array) -> sampling.SampleOutput:
    """The samples the step on `state` draws (step 1 of build_step, with the state's rollout key)."""
    _, roll_key, _ = jax.random.split(state.rng, 3)
    return _rollout(settings, state.model, prompt_ids, prompt_mask, roll_key)


def build_rollout(settings: StepSettings) -> Callable:
    """The step's rollout alone, `(state, prompt_ids, prompt_mask) -> response lengths [B]`: the same samples
    the next step will draw, for timing rollout and update separately (the step itself is one program)."""

    def rollout(state: optim.TrainState, prompt_ids: jax.Array, prompt_mask: jax.Array) -> jax.Array:
        return rollout_samples(settings, state, prompt_ids, prompt_mask).lengths

    return rollout


def two_phase(settings: StepSettings, n_new: int) -> bool:
    """Whether the step selects with a statistics pass over the whole batch before its gradient pass.

    Needed when batch statistics decide the selection (norm_scope "batch": clip quantile, min-max, medians, and
    unit "batch" ranking) and the batch is split into micro-batches; one micro-batch, a rule that keeps every
    token, or norm_scope "micro_batch" (statistics per micro-batch, no extra forward) select in the loss pass.
    """
    sel = settings.selection
    options = selection.SelectionOptions(**sel.options)
    return (settings.micro_batches > 1 and options.norm_scope != "micro_batch"
            and not _keeps_all(settings, n_new))


def _nonfinite(hidden, mask):
    """Response positions whose hidden state holds a non-finite value ([b, N, D], [b, N] -> [])."""
    return jnp.sum(~jnp.all(jnp.isfinite(hidden), axis=-1) & mask.astype(bool)).astype(jnp.float32)


def _logprob_gap(token_stats, sampled_logprobs, mask):
    """|trainer log p(token) - sampler log p(token)| over response tokens ([B, N] each) -> (mean, max)."""
    gap = jnp.where(mask.astype(bool), jnp.abs(token_stats["student_token_logprob"] - sampled_logprobs), 0.0)
    return jnp.sum(gap) / jnp.maximum(jnp.sum(mask), 1), jnp.max(gap)


def build_step(settings: StepSettings, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule) -> Callable:
    """The training step for fixed settings; see the module docstring."""
    update = build_update(settings, optimizer, schedule)

    def step(state: optim.TrainState, teacher, prompt_ids: jax.Array, prompt_mask: jax.Array,
             teacher_prompt_ids: jax.Array | None = None, teacher_prompt_mask: jax.Array | None = None):
        # 1. Rollout with the current student (resharded for decoding when a mesh asks for it).
        with jax.named_scope("rollout"):
            out = rollout_samples(settings, state, prompt_ids, prompt_mask)
        return update(state, teacher, prompt_ids, prompt_mask, out, teacher_prompt_ids, teacher_prompt_mask)

    return step


def build_update(settings: StepSettings, optimizer: optax.GradientTransformation,
                 schedule: optax.Schedule) -> Callable:
    """Steps 2-5 of the training step on given samples, `(state, teacher, prompt_ids, prompt_mask, out[,
    teacher_prompt_ids, teacher_prompt_mask]) -> (state, metrics)`, out the rollout's SampleOutput for those prompts
    (build_step draws it with rollout_samples; a benchmark can time the update alone)."""
    roll, sel = settings.rollout, settings.selection
    options = selection.SelectionOptions(**sel.options)
    token_mean = options.aggregation == "token_mean"
    m = settings.micro_batches

    def forward(model, part, prefix=""):
        """Response hidden states of one micro-batch [b, N, D]; prefix "teacher_" reads the teacher-only prompt's
        sequences when the batch has them (else the teacher sees the student's). A batch with prompt_ids holds
        each prompt once for its rows (update_shares_prompts)."""
        if "prompt_ids" in part:
            return prefixed_response_hidden(model, part.get(prefix + "prompt_ids", part["prompt_ids"]),
                                            part.get(prefix + "prompt_mask", part["prompt_mask"]),
                                            part["resp_tokens"], part["resp_mask"])
        tokens = part.get(prefix + "tokens", part["tokens"])
        seq_mask = part.get(prefix + "seq_mask", part["seq_mask"])
        prompt_len = tokens.shape[1] - part["resp_mask"].shape[1]
        return response_hidden(model, tokens, seq_mask, prompt_len)

    def micro_loss(params, teacher, teacher_head, part, key, knob):
        """Select and score in one pass: the TIP loss of one micro-batch, weighted for accumulation."""
        with jax.named_scope("teacher"):
            teacher_hidden = jax.lax.stop_gradient(forward(teacher, part, "teacher_"))
        with jax.named_scope("student"):
            student_hidden = forward(params, part)
        with jax.named_scope("selection"):
            loss, metrics, token_stats = selection.distill_loss(
                student_hidden, params.head()[:, :settings.vocab], teacher_hidden, teacher_head, part["resp_mask"],
                rule=sel.rule, ratio=knob["ratio"], rng=key, options=options, tokens=part["resp_tokens"],
                return_token_stats=True, capacity=knob["capacity"], divergence=sel.divergence, beta=knob["beta"],
                chunk_size=sel.chunk_size)
        metrics.update(n_teacher_nonfinite=_nonfinite(teacher_hidden, part["resp_mask"]),
                       n_student_nonfinite=_nonfinite(student_hidden, part["resp_mask"]))
        # Micro-batch losses are summed with these weights, so the step's loss is the mean over the whole
        # batch's kept tokens (token_mean) or rollouts (rollout_mean), whatever the micro-batching.
        weight = metrics["n_kept"] if token_mean else jnp.asarray(part["resp_mask"].shape[0], jnp.float32)
        return loss * weight, ((metrics, token_stats), weight)

    def layout(batch):
        """(split, merge) of a batch into micro-batches: whole prompts per part when it holds prompts."""
        group = batch["resp_mask"].shape[0] // batch["prompt_ids"].shape[0] if "prompt_ids" in batch else 1

        def split(b):
            return {k: rows.split(x, m, settings.split_sharding, group=1 if k in _PROMPT_KEYS else group)
                    for k, x in b.items()}

        return split, lambda x: rows.merge(x, group=group)

    def one_pass(params, teacher, teacher_head, batch, key, knob):
        def loss_fn(p, part, part_key):
            return micro_loss(p, teacher, teacher_head, part, part_key, knob)

        # One micro-batch draws with `key` itself, as the whole-batch plan of the two-pass step does.
        keys = key[None] if m == 1 else jax.random.split(key, m)
        split, merge = layout(batch)
        loss, grads, (mb_metrics, mb_stats), _ = optim.accumulate(
            loss_fn, params, batch, m, part_args=keys, split=split, param_shardings=settings.param_shardings)
        token_stats = {k: merge(v) for k, v in mb_stats.items()}
        if m > 1 and _keeps_all(settings, batch["resp_mask"].shape[1]):
            # Every token kept: the whole batch's metrics (quadrant medians included) from the merged statistics.
            metrics = selection.plan(sel.rule, token_stats, batch["resp_mask"], knob["ratio"], key, options=options,
                                     capacity=knob["capacity"]).metrics
            metrics.update({k: jnp.sum(mb_metrics[k]) for k in ("n_teacher_nonfinite", "n_student_nonfinite")})
        else:
            # Counts add up over micro-batches; shares and means are averaged (exact for one micro-batch).
            metrics = {k: jnp.sum(v) if k.startswith("n_") else jnp.mean(v) for k, v in mb_metrics.items()}
        return loss, grads, metrics, token_stats

    def two_passes(params, teacher, teacher_head, batch, key, knob):
        student_head = params.head()[:, :settings.vocab]

        def stats_part(part):
            teacher_hidden = forward(teacher, part, "teacher_")
            student_hidden = jax.lax.stop_gradient(forward(params, part))
            token_stats = selection.token_stats_from_hidden(
                student_hidden, student_head, teacher_hidden, teacher_head, part["resp_mask"],
                chunk_size=sel.chunk_size, tokens=part["resp_tokens"], beta=None)
            return teacher_hidden, token_stats, _nonfinite(teacher_hidden, part["resp_mask"]), _nonfinite(
                student_hidden, part["resp_mask"])

        # Statistics pass (no gradient): the teacher's hidden states are kept for the gradient pass.
        with jax.named_scope("statistics"):
            split, merge = layout(batch)
            teacher_hidden, mb_stats, bad_teacher, bad_student = jax.lax.map(stats_part, split(batch))
            teacher_hidden = merge(teacher_hidden)
            token_stats = {k: merge(v) for k, v in mb_stats.items()}
        with jax.named_scope("selection"):
            plan = selection.plan(sel.rule, token_stats, batch["resp_mask"], knob["ratio"], key, options=options,
                                  capacity=knob["capacity"])
        # The student's sequences (the teacher's hidden states are gathered already).
        planned = {k: batch[k] for k in ("tokens", "seq_mask", "prompt_ids", "prompt_mask", "resp_tokens", "resp_mask")
                   if k in batch}
        planned.update(idx=plan.idx, scale=plan.scale, teacher=selection.gather(teacher_hidden, plan.idx))

        def loss_fn(p, part, _):
            with jax.named_scope("student"):
                student_hidden = selection.gather(forward(p, part), part["idx"])
            loss = selection.planned_loss(student_hidden, p.head()[:, :settings.vocab], part["teacher"],
                                          teacher_head, None, part["scale"], divergence=sel.divergence,
                                          beta=knob["beta"], chunk_size=sel.chunk_size)
            return loss, ({}, jnp.ones((), jnp.float32))

        # Gradient pass: plan.scale holds the whole batch's normaliser, so the micro-batch losses just add up.
        loss, grads, _, _ = optim.accumulate(loss_fn, params, planned, m, mean=False, split=layout(planned)[0],
                                             param_shardings=settings.param_shardings)
        metrics = dict(plan.metrics, n_teacher_nonfinite=jnp.sum(bad_teacher), n_student_nonfinite=jnp.sum(bad_student))
        return loss, grads, metrics, token_stats

    def update(state: optim.TrainState, teacher, prompt_ids: jax.Array, prompt_mask: jax.Array,
               out: sampling.SampleOutput, teacher_prompt_ids: jax.Array | None = None,
               teacher_prompt_mask: jax.Array | None = None):
        rng, _, select_key = jax.random.split(state.rng, 3)
        params = state.model
        prompt_len = prompt_ids.shape[1]
        if settings.teacher_source == "student":
            # Self-distillation: the current student is the teacher (its forward is under stop_gradient below).
            teacher = params
        resp_mask = out.response_mask[:, prompt_len:]
        batch = dict(resp_mask=resp_mask, resp_tokens=out.tokens[:, prompt_len:])
        copies = prompt_copies(settings, prompt_ids.shape[0])
        if copies < roll.samples_per_prompt:  # each prompt (copy) once for its samples
            def copied(x):
                return jnp.repeat(x, copies, axis=0)

            batch.update(prompt_ids=copied(prompt_ids), prompt_mask=copied(prompt_mask))
            if teacher_prompt_ids is not None:
                batch.update(teacher_prompt_ids=copied(teacher_prompt_ids),
                             teacher_prompt_mask=copied(teacher_prompt_mask))
        else:
            seq_mask = jnp.concatenate([jnp.repeat(prompt_mask, roll.samples_per_prompt, axis=0), resp_mask], axis=1)
            batch.update(tokens=out.tokens, seq_mask=seq_mask)
            if teacher_prompt_ids is not None:  # teacher-only context: its own prompt before the same response
                batch["teacher_tokens"], batch["teacher_seq_mask"] = teacher_sequences(
                    teacher_prompt_ids, teacher_prompt_mask, batch["resp_tokens"], resp_mask, roll.samples_per_prompt)

        # 2-4. Teacher scoring, selection and the student's TIP loss, micro-batch by micro-batch.
        teacher_head = jax.lax.stop_gradient(teacher.head()[:, :settings.vocab])
        passes = two_passes if two_phase(settings, resp_mask.shape[1]) else one_pass
        knob = knobs(settings, state.step, resp_mask.shape[1])
        loss, grads, metrics, token_stats = passes(params, teacher, teacher_head, batch, select_key, knob)

        # 5. Clip + AdamW; a non-finite loss or gradient skips the whole update (and is counted).
        with jax.named_scope("update"):
            new_state, update_metrics = optim.apply_update(state, loss, grads, optimizer, schedule, rng=rng)

        # The trainer's log-probabilities of the sampled tokens against the sampler's: ~0 up to dtype rounding.
        gap_mean, gap_max = _logprob_gap(token_stats, out.logprobs[:, prompt_len:], resp_mask)
        lengths = out.lengths.astype(jnp.float32)
        metrics.update(update_metrics)
        metrics.update(
            response_length_mean=jnp.mean(lengths), response_length_max=jnp.max(lengths),
            truncation_rate=jnp.mean(out.truncated.astype(jnp.float32)), response_tokens=jnp.sum(lengths),
            logprob_gap_mean=gap_mean, logprob_gap_max=gap_max,
            selection_ratio=jnp.asarray(knob["ratio"], jnp.float32),
            selection_beta=jnp.asarray(knob["beta"], jnp.float32))
        return new_state, metrics

    return update
