"""One OPD training step as a single pure function: rollout -> teacher -> student -> TIP loss -> update.

`build_step` returns `step(state, teacher, prompt_ids, prompt_mask) -> (state, metrics)`; the trainer jits it
once with explicit shardings and donates the state, so rollout, teacher scoring and the update are one
compiled program with no host round trip. Shapes: P prompts, n samples each, B = P * n rows, Tp prompt
columns (a fixed bucket), N = max_new_tokens, S = Tp + N, D model width, V the shared vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tipjax import models, optim, rows, sampling, selection
from tipjax.train_config import RolloutSpec, SelectionSpec


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


def response_hidden(model, tokens, seq_mask, prompt_len):
    """Hidden states that predict the response tokens: columns Tp-1 .. S-2 of [B, S] -> [B, N, D]."""
    hidden = model.hidden(tokens, positions=models.positions_from_mask(seq_mask), attention_mask=seq_mask)
    return hidden[:, prompt_len - 1:-1]


def _rollout(settings: StepSettings, params, prompt_ids, prompt_mask, rng) -> sampling.SampleOutput:
    """n samples per prompt from the current student; with rollout.groups > 1 the rows are sampled in
    sequential groups (lax.map), which divides the KV cache's memory by the number of groups."""
    roll = settings.rollout
    # Decoding computes in the compute dtype anyway; a copy in that dtype halves the resharded weights (fp32 master).
    compute = jnp.dtype(params.config.compute_dtype)
    params = jax.tree.map(lambda p: p.astype(compute) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)
    if settings.sampling_shardings is not None:
        params = jax.lax.with_sharding_constraint(params, settings.sampling_shardings)
    kwargs = dict(max_new_tokens=roll.max_new_tokens, temperature=roll.temperature, top_p=roll.top_p,
                  top_k=roll.top_k, eos_token_id=settings.eos_ids or None, buckets=(prompt_ids.shape[1],))
    if roll.groups == 1:
        return sampling.generate(params, prompt_ids, prompt_mask, rng=rng, num_samples=roll.samples_per_prompt,
                                 **kwargs)
    ids, mask = (rows.split(jnp.repeat(x, roll.samples_per_prompt, axis=0), roll.groups, settings.split_sharding)
                 for x in (prompt_ids, prompt_mask))

    def one_group(args):
        return sampling.generate(params, args[0], args[1], rng=args[2], **kwargs)

    out = jax.lax.map(one_group, (ids, mask, jax.random.split(rng, roll.groups)))
    return jax.tree.map(rows.merge, out)


def build_rollout(settings: StepSettings) -> Callable:
    """The step's rollout alone, `(state, prompt_ids, prompt_mask) -> response lengths [B]`: the same samples
    the next step will draw, for timing rollout and update separately (the step itself is one program)."""

    def rollout(state: optim.TrainState, prompt_ids: jax.Array, prompt_mask: jax.Array) -> jax.Array:
        _, roll_key, _ = jax.random.split(state.rng, 3)
        return _rollout(settings, state.params, prompt_ids, prompt_mask, roll_key).lengths

    return rollout


def build_step(settings: StepSettings, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule) -> Callable:
    """The training step for fixed settings; see the module docstring."""
    roll, sel = settings.rollout, settings.selection
    options = selection.SelectionOptions(**sel.options)
    token_mean = options.aggregation == "token_mean"

    def micro_loss(params, teacher, teacher_head, part, key):
        """The TIP loss of one micro-batch; the teacher scores it first (frozen, no gradient)."""
        tokens, seq_mask, resp_mask = part["tokens"], part["seq_mask"], part["resp_mask"]
        prompt_len = tokens.shape[1] - resp_mask.shape[1]
        with jax.named_scope("teacher"):
            teacher_hidden = jax.lax.stop_gradient(response_hidden(teacher, tokens, seq_mask, prompt_len))
        with jax.named_scope("student"):
            student_hidden = response_hidden(params, tokens, seq_mask, prompt_len)
        with jax.named_scope("selection"):
            loss, metrics = selection.distill_loss(
                student_hidden, params.head()[:, :settings.vocab], teacher_hidden, teacher_head, resp_mask,
                rule=sel.rule, ratio=sel.ratio, rng=key, divergence=sel.divergence, chunk_size=sel.chunk_size,
                options=options, beta=sel.beta)
        # Micro-batch losses are summed with these weights, so the step's loss is the mean over the whole
        # batch's kept tokens (token_mean) or rollouts (rollout_mean), whatever the micro-batching.
        weight = metrics["n_kept"] if token_mean else jnp.asarray(resp_mask.shape[0], jnp.float32)
        return loss * weight, (metrics, weight)

    def step(state: optim.TrainState, teacher, prompt_ids: jax.Array, prompt_mask: jax.Array):
        rng, roll_key, select_key = jax.random.split(state.rng, 3)
        params = state.params
        prompt_len = prompt_ids.shape[1]

        # 1. Rollout with the current student (resharded for decoding when a mesh asks for it).
        with jax.named_scope("rollout"):
            out = _rollout(settings, params, prompt_ids, prompt_mask, roll_key)
        resp_mask = out.response_mask[:, prompt_len:]
        seq_mask = jnp.concatenate([jnp.repeat(prompt_mask, roll.samples_per_prompt, axis=0), resp_mask], axis=1)

        # 2-4. Teacher scoring and the student's TIP loss, micro-batch by micro-batch, gradients accumulated.
        m = settings.micro_batches
        teacher_head = jax.lax.stop_gradient(teacher.head()[:, :settings.vocab])

        def loss_fn(p, part, key):
            return micro_loss(p, teacher, teacher_head, part, key)

        batch = dict(tokens=out.tokens, seq_mask=seq_mask, resp_mask=resp_mask)
        loss, grads, mb_metrics, _ = optim.accumulate(
            loss_fn, params, batch, m, part_args=jax.random.split(select_key, m), split_sharding=settings.split_sharding,
            param_shardings=settings.param_shardings)

        # 5. Clip + AdamW; a non-finite loss or gradient skips the whole update (and is counted).
        with jax.named_scope("update"):
            new_state, metrics = optim.apply_update(state, loss, grads, optimizer, schedule, rng=rng)

        lengths = out.lengths.astype(jnp.float32)
        # Counts add up over micro-batches; shares and means are averaged.
        metrics.update({k: jnp.sum(v) if k.startswith("n_") else jnp.mean(v) for k, v in mb_metrics.items()})
        metrics.update(
            response_length_mean=jnp.mean(lengths), response_length_max=jnp.max(lengths),
            truncation_rate=jnp.mean(out.truncated.astype(jnp.float32)), response_tokens=jnp.sum(lengths))
        return new_state, metrics

    return step
