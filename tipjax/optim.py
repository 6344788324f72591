"""The update machinery every trainer shares: optimizer and schedule, train state and its shardings, gradient
accumulation over micro-batches, and the clipped AdamW update that skips non-finite steps.

A trainer supplies only a loss closure `loss_fn(params, micro_batch) -> (loss, (metrics, weight))`; the OPD
step (tipjax.step) and the SFT step (tipjax.sft) are both built on `accumulate` + `apply_update`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from tipjax import rows
from tipjax.config_schema import OptimSpec


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # [] int32: updates attempted so far
    model: Any             # the trained models.Decoder (its parameters are the optimised leaves)
    opt_state: Any
    rng: jax.Array
    skipped: jax.Array     # [] int32: updates skipped because loss or gradients were not finite
    skipped_run: jax.Array  # [] int32: consecutive skipped updates up to this step (0 after a good one)


def learning_rate_schedule(spec: OptimSpec, total_steps: int) -> optax.Schedule:
    """Linear warmup, then optim.schedule from learning_rate to end_lr_factor * learning_rate by step decay_steps
    (0: total_steps; counted from 0, warmup included): cosine (the paper), linear, or constant (no decay)."""
    decay = max(spec.decay_steps or total_steps, spec.warmup_steps + 1)
    kind = spec.schedule
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if spec.warmup_steps else spec.learning_rate, peak_value=spec.learning_rate,
            warmup_steps=spec.warmup_steps, decay_steps=decay, end_value=spec.learning_rate * spec.end_lr_factor)
    end = spec.learning_rate * (spec.end_lr_factor if kind == "linear" else 1.0)
    after = optax.linear_schedule(spec.learning_rate, end, decay - spec.warmup_steps)
    if not spec.warmup_steps:
        return after
    warmup = optax.linear_schedule(0.0, spec.learning_rate, spec.warmup_steps)
    return optax.join_schedules([warmup, after], [spec.warmup_steps])


def build_optimizer(spec: OptimSpec, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW; norm weights and biases are decayed like the reference (verl) does."""
    return optax.chain(
        optax.clip_by_global_norm(spec.grad_clip) if spec.grad_clip > 0 else optax.identity(),
        optax.adamw(learning_rate_schedule(spec, total_steps), b1=spec.b1, b2=spec.b2, eps=spec.eps,
                    weight_decay=spec.weight_decay))


def init_state(params, rng: jax.Array, *, optimizer: optax.GradientTransformation) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, model=params, opt_state=optimizer.init(params), rng=rng, skipped=zero,
                      skipped_run=zero)


def state_shardings(params, optimizer: optax.GradientTransformation, mesh) -> TrainState:
    """TrainState of NamedShardings: optimizer moments sharded like their parameters, scalars replicated.

    (Read off explicitly: XLA would replicate the zeros that optimizer.init returns.)
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_shardings = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt, param_shardings,
                                          transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, model=param_shardings, opt_state=opt_shardings, rng=replicated,
                      skipped=replicated, skipped_run=replicated)


def tree_norm(tree) -> jax.Array:
    return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def accumulate(loss_fn: Callable, params, batch, micro_batches: int, *, part_args=None, mean: bool = True,
               split_sharding=None, param_shardings=None, split: Callable | None = None):
    """Loss and gradient of `loss_fn` over `micro_batches` parts of `batch`, one part at a time (lax.scan).

    loss_fn(params, part, part_arg) -> (loss, (metrics, weight)). With mean=True `loss` is the part's loss
    multiplied by its weight (e.g. its kept-token count) and the result is sum(loss) / sum(weight), the same
    whatever the micro-batching; with mean=False the parts' losses are already shares of the batch loss
    (normalised over the whole batch beforehand) and are summed.
    batch: a pytree of [B, ...] arrays; part j holds rows j, j + m, ... (rows.split). part_args: an optional
    pytree of [m, ...] arrays, entry j going to part j (e.g. rng keys); split(batch) -> the parts' [m, ...]
    pytree replaces rows.split where a batch mixes row and prompt arrays. Gradients accumulate in fp32.
    Returns (loss [], grads like params in fp32, stacked per-part metrics [m, ...], weight_sum []).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    parts = (split(batch) if split is not None
             else jax.tree.map(lambda x: rows.split(x, micro_batches, split_sharding), batch))

    def body(carry, xs):
        grads, loss_sum, weight_sum = carry
        part, part_arg = xs
        (loss, (metrics, weight)), g = grad_fn(params, part, part_arg)
        grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
        return (grads, loss_sum + loss, weight_sum + weight), metrics

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    if param_shardings is not None:
        zeros = jax.lax.with_sharding_constraint(zeros, param_shardings)
    zero = jnp.zeros((), jnp.float32)
    (grads, loss_sum, weight_sum), metrics = jax.lax.scan(body, (zeros, zero, zero), (parts, part_args))
    scale = 1.0 / jnp.maximum(weight_sum, 1.0) if mean else jnp.ones((), jnp.float32)
    return loss_sum * scale, jax.tree.map(lambda g: g * scale, grads), metrics, weight_sum


def apply_update(state: TrainState, loss: jax.Array, grads, optimizer: optax.GradientTransformation,
                 schedule: optax.Schedule, *, rng: jax.Array):
    """Clip + AdamW; a non-finite loss or gradient skips the whole update (counted, and the run of consecutive
    skips is kept so the driver can stop a run that no longer learns). Returns (new state, update metrics)."""
    params = state.model
    grad_norm = tree_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    new_params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_params, params)
    opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
    skip = (~finite).astype(jnp.int32)
    new_state = TrainState(step=state.step + 1, model=new_params, opt_state=opt_state, rng=rng,
                           skipped=state.skipped + skip, skipped_run=jnp.where(finite, 0, state.skipped_run + 1))
    metrics = dict(
        loss=loss, grad_norm=grad_norm, param_norm=tree_norm(new_params),
        update_norm=jnp.where(finite, tree_norm(updates), 0.0), learning_rate=schedule(state.step),
        skipped_update=skip, skipped_total=new_state.skipped, skipped_run=new_state.skipped_run,
        loss_finite=jnp.isfinite(loss).astype(jnp.int32), grads_finite=jnp.isfinite(grad_norm).astype(jnp.int32))
    return new_state, metrics
