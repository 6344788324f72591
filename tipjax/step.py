"""One OPD training step as a single pure function: rollout -> teacher -> student -> TIP loss -> update.

`build_step` returns `step(state, teacher, prompt_ids, prompt_mask) -> (state, metrics)`; the trainer jits it
once with explicit shardings and donates the state, so rollout, teacher scoring and the update are one
compiled program with no host round trip. Shapes: P prompts, n samples each, B = P * n rows, Tp prompt
columns (a fixed bucket), N = max_new_tokens, S = Tp + N, D model width, V the shared vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from tipjax import sampling, selection
from tipjax.train_config import OptimSpec, RolloutSpec, SelectionSpec


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # [] int32: updates attempted so far
    params: Any            # the student models.Decoder
    opt_state: Any
    rng: jax.Array
    skipped: jax.Array     # [] int32: updates skipped because loss or gradients were not finite


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


def learning_rate_schedule(spec: OptimSpec, total_steps: int) -> optax.Schedule:
    """Linear warmup then cosine decay to end_lr_factor * learning_rate (the paper: cosine)."""
    decay = spec.decay_steps or total_steps
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if spec.warmup_steps else spec.learning_rate, peak_value=spec.learning_rate,
        warmup_steps=spec.warmup_steps, decay_steps=max(decay, spec.warmup_steps + 1),
        end_value=spec.learning_rate * spec.end_lr_factor)


def build_optimizer(spec: OptimSpec, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW; norm weights and biases are decayed like the reference (verl) does."""
    return optax.chain(
        optax.clip_by_global_norm(spec.grad_clip) if spec.grad_clip > 0 else optax.identity(),
        optax.adamw(learning_rate_schedule(spec, total_steps), b1=spec.b1, b2=spec.b2, eps=spec.eps,
                    weight_decay=spec.weight_decay))


def init_state(params, rng: jax.Array, *, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng,
                      skipped=jnp.zeros((), jnp.int32))


def state_shardings(params, optimizer: optax.GradientTransformation, mesh) -> TrainState:
    """TrainState of NamedShardings: optimizer moments sharded like their parameters, scalars replicated.

    (Read off explicitly: XLA would replicate the zeros that optimizer.init returns.)
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_shardings = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt, param_shardings,
                                          transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated,
                      skipped=replicated)


def sequence_positions(mask: jax.Array) -> jax.Array:
    """Per-row positions that start at 0 at the first real token (left padding) -> [B, S] int32."""
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)


def _response_hidden(model, tokens, seq_mask, prompt_len):
    """Hidden states that predict the response tokens: columns Tp-1 .. S-2 -> [B, N, D]."""
    hidden = model.hidden(tokens, positions=sequence_positions(seq_mask), attention_mask=seq_mask)
    return hidden[:, prompt_len - 1:-1]


def _split(x: jax.Array, parts: int, sharding) -> jax.Array:
    """[B, ...] -> [parts, B / parts, ...] with a stride (part j holds rows j, j + parts, ...).

    Rows are sharded in contiguous blocks over (data, fsdp); the stride gives every part rows from every
    block, so each micro-batch (or rollout group) stays spread over all devices instead of landing on one.
    """
    out = x.reshape(x.shape[0] // parts, parts, *x.shape[1:]).swapaxes(0, 1)
    return out if sharding is None else jax.lax.with_sharding_constraint(out, sharding)


def _merge(x: jax.Array) -> jax.Array:
    """Inverse of _split: [parts, B / parts, ...] -> [B, ...] in the original row order."""
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def _tree_norm(tree) -> jax.Array:
    return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


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
    ids, mask = (_split(jnp.repeat(x, roll.samples_per_prompt, axis=0), roll.groups, settings.split_sharding)
                 for x in (prompt_ids, prompt_mask))

    def one_group(args):
        return sampling.generate(params, args[0], args[1], rng=args[2], **kwargs)

    out = jax.lax.map(one_group, (ids, mask, jax.random.split(rng, roll.groups)))
    return jax.tree.map(_merge, out)


def build_rollout(settings: StepSettings) -> Callable:
    """The step's rollout alone, `(state, prompt_ids, prompt_mask) -> response lengths [B]`: the same samples
    the next step will draw, for timing rollout and update separately (the step itself is one program)."""

    def rollout(state: TrainState, prompt_ids: jax.Array, prompt_mask: jax.Array) -> jax.Array:
        _, roll_key, _ = jax.random.split(state.rng, 3)
        return _rollout(settings, state.params, prompt_ids, prompt_mask, roll_key).lengths

    return rollout


def build_step(settings: StepSettings, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule) -> Callable:
    """The training step for fixed settings; see the module docstring."""
    roll, sel = settings.rollout, settings.selection
    options = selection.SelectionOptions(**sel.options)
    token_mean = options.aggregation == "token_mean"

    def micro_loss(params, teacher_hidden, teacher_head, tokens, seq_mask, resp_mask, prompt_len, rng):
        student_hidden = _response_hidden(params, tokens, seq_mask, prompt_len)
        loss, metrics = selection.distill_loss(
            student_hidden, params.head()[:, :settings.vocab], teacher_hidden, teacher_head, resp_mask,
            rule=sel.rule, ratio=sel.ratio, rng=rng, divergence=sel.divergence, chunk_size=sel.chunk_size,
            options=options, beta=sel.beta)
        # Micro-batch losses are summed with these weights, so the step's loss is the mean over the whole
        # batch's kept tokens (token_mean) or rollouts (rollout_mean), whatever the micro-batching.
        weight = metrics["n_kept"] if token_mean else jnp.asarray(resp_mask.shape[0], jnp.float32)
        return loss * weight, (metrics, weight)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, teacher, prompt_ids: jax.Array, prompt_mask: jax.Array):
        rng, roll_key, select_key = jax.random.split(state.rng, 3)
        params = state.params
        prompt_len = prompt_ids.shape[1]

        # 1. Rollout with the current student (resharded for decoding when a mesh asks for it).
        out = _rollout(settings, params, prompt_ids, prompt_mask, roll_key)
        tokens = out.tokens
        seq_mask = jnp.concatenate([jnp.repeat(prompt_mask, roll.samples_per_prompt, axis=0),
                                    out.response_mask[:, prompt_len:]], axis=1)
        resp_mask = out.response_mask[:, prompt_len:]
        teacher_head = jax.lax.stop_gradient(teacher.head()[:, :settings.vocab])

        # 2-4. Teacher scoring and the student's TIP loss, micro-batch by micro-batch, gradients accumulated.
        m = settings.micro_batches
        xs = tuple(_split(x, m, settings.split_sharding) for x in (tokens, seq_mask, resp_mask))
        xs += (jax.random.split(select_key, m),)

        def accumulate(carry, x):
            grads, loss_sum, weight_sum = carry
            mb_tokens, mb_seq, mb_resp, key = x
            teacher_hidden = jax.lax.stop_gradient(_response_hidden(teacher, mb_tokens, mb_seq, prompt_len))
            (loss, (metrics, weight)), g = grad_fn(params, teacher_hidden, teacher_head, mb_tokens, mb_seq,
                                                   mb_resp, prompt_len, key)
            grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
            return (grads, loss_sum + loss, weight_sum + weight), metrics

        # fp32 accumulators, whatever the parameter dtype.
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        if settings.param_shardings is not None:
            zeros = jax.lax.with_sharding_constraint(zeros, settings.param_shardings)
        (grads, loss_sum, weight_sum), mb_metrics = jax.lax.scan(
            accumulate, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)), xs)
        scale = 1.0 / jnp.maximum(weight_sum, 1.0)
        loss = loss_sum * scale
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)

        # 5. Clip + AdamW; a non-finite loss or gradient skips the whole update (and is counted).
        grad_norm = _tree_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_params, params)
        opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)

        lengths = out.lengths.astype(jnp.float32)
        # Counts add up over micro-batches; shares and means are averaged.
        metrics = {k: jnp.sum(v) if k.startswith("n_") else jnp.mean(v) for k, v in mb_metrics.items()}
        metrics.update(
            loss=loss, grad_norm=grad_norm, param_norm=_tree_norm(new_params),
            update_norm=jnp.where(finite, _tree_norm(updates), 0.0), learning_rate=schedule(state.step),
            response_length_mean=jnp.mean(lengths), response_length_max=jnp.max(lengths),
            truncation_rate=jnp.mean(out.truncated.astype(jnp.float32)), response_tokens=jnp.sum(lengths),
            skipped_update=(~finite).astype(jnp.int32), skipped_total=state.skipped + (~finite))
        new_state = TrainState(step=state.step + 1, params=new_params, opt_state=opt_state, rng=rng,
                               skipped=state.skipped + (~finite).astype(jnp.int32))
        return new_state, metrics

    return step
