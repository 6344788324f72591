"""The mutation check's catalogue: each Mutant is a named one-line bug (a few are two coordinated lines) and the
test files that should notice it. scripts/mutation_check.py applies them one at a time to a copy of the repository."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str                        # relative to the repository root
    old: str                         # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]           # test files, globs or node ids (path::test), relative to the root; run in order
    description: str
    also: tuple[tuple[str, str], ...] = ()  # further (old, new) edits of the same bug in the same file

    @property
    def edits(self) -> tuple[tuple[str, str], ...]:
        return ((self.old, self.new),) + self.also


SELECTION_TESTS = ("tests/test_selection_*.py",)

MUTANTS: tuple[Mutant, ...] = (
    # --- the OPD step and the shared update machinery --------------------------------------------------------
    Mutant(
        "step_hidden_shift", "tipjax/step.py",
        "return hidden[:, prompt_len - 1:-1]",
        "return jnp.roll(hidden, -1, axis=1)[:, prompt_len - 1:-1]",
        ("tests/test_step_consistency.py",),
        "response_hidden off by one: the hidden state of each response token itself (columns Tp .. S-1, "
        "wrapped) instead of the one that predicts it; same shape"),
    Mutant(
        "microbatch_equal_weights", "tipjax/step.py",
        'weight = metrics["n_kept"] if token_mean else ',
        "weight = jnp.float32(1.0) if token_mean else ",
        ("tests/test_step_consistency.py", "tests/test_train.py"),
        "token_mean: micro-batch losses averaged with equal weights instead of weighted by their kept-token "
        "counts (one-pass step)"),
    Mutant(
        "nonfinite_skip_misses_opt_state", "tipjax/optim.py",
        "opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)",
        "opt_state = jax.tree.map(lambda new, old: new, opt_state, state.opt_state)",
        ("tests/test_update_math.py", "tests/test_train.py", "tests/test_sft.py"),
        "a skipped (non-finite) update still writes its NaN moments into the optimizer state"),
    Mutant(
        "grads_not_divided_by_weight_sum", "tipjax/optim.py",
        "return loss_sum * scale, jax.tree.map(lambda g: g * scale, grads), metrics, weight_sum",
        "return loss_sum * scale, grads, metrics, weight_sum",
        ("tests/test_update_math.py", "tests/test_step_consistency.py", "tests/test_sft.py", "tests/test_train.py"),
        "accumulate normalises the loss but not the gradient (sum of weighted gradients, not their mean)"),
    # --- selection -------------------------------------------------------------------------------------------
    Mutant(
        "minmax_lower_bound_over_padding", "tipjax/selection/normalise.py",
        "lo = jnp.min(jnp.where(valid, x, jnp.inf), axis=axis, keepdims=True)",
        "lo = jnp.min(x, axis=axis, keepdims=True)",
        ("tests/test_selection_normalise.py", "tests/test_selection_rules.py"),
        "min-max lower bound taken over padding too (masked statistics are 0)"),
    Mutant(
        "quantile_clip_at_max", "tipjax/selection/normalise.py",
        "h = jnp.minimum(h, masked_quantile(h, mask, clip_quantile, per_row=per_row))",
        "h = jnp.minimum(h, masked_quantile(h, mask, 1.0, per_row=per_row))",
        ("tests/test_selection_normalise.py", "tests/test_selection_rules.py"),
        "entropy clipped at its maximum (quantile 1.0) instead of options.clip_quantile"),
    Mutant(
        "entropy_not_normalised", "tipjax/selection/stats.py",
        '"entropy": losses.entropy(log_ps) / log_v,',
        '"entropy": losses.entropy(log_ps),',
        ("tests/test_selection_stats.py", "tests/test_selection_rules.py", "tests/test_selection_distill.py"),
        "student entropy in nats, not divided by ln V (Eq. 2)"),
    Mutant(
        "keep_count_ceil", "tipjax/selection/rules.py",
        "k = jnp.clip((num[best].astype(jnp.int32) * m) // den[best].astype(jnp.int32), 0, m)",
        "k = jnp.clip(-(-(num[best].astype(jnp.int32) * m) // den[best].astype(jnp.int32)), 0, m)",
        ("tests/test_selection_rules.py", "tests/test_selection_reference.py"),
        "keeps ceil(ratio * m) tokens per row instead of floor (Eq. 8)"),
    Mutant(
        "soft_or_as_and", "tipjax/selection/rules.py",
        "soft_or = 1.0 - (1.0 - h_hat) * (1.0 - d_hat)",
        "soft_or = h_hat * d_hat",
        ("tests/test_selection_rules.py", "tests/test_selection_distill.py"),
        "Soft-OR score combines the axes like a min (soft AND, h * d) instead of 1 - (1 - h)(1 - d) (Eq. 7)"),
    Mutant(
        "q3_ranks_by_rkl", "tipjax/selection/rules.py",
        'return stats["fkl"] * (1.0 - h_hat), None',
        'return stats["rkl"] * (1.0 - h_hat), None',
        ("tests/test_selection_rules.py",),
        "the q3 rule ranks by reverse KL instead of forward KL"),
    Mutant(
        "rank_key_keeps_padding", "tipjax/selection/rules.py",
        "return jnp.where(mask.astype(bool), finite, -jnp.inf)",
        "return finite",
        ("tests/test_selection_rules.py", "tests/test_selection_plan.py"),
        "padding and non-finite tokens keep their (zero) score in the ranking, so top-k can pick them"),
    Mutant(
        "default_divergence_fkl", "tipjax/selection/distill.py",
        '    rng,\n    divergence="rkl",\n',
        '    rng,\n    divergence="fkl",\n',
        ("tests/test_selection_distill.py",) + SELECTION_TESTS,
        "distill_loss's default training divergence is the forward KL instead of the reverse KL"),
    # --- sampling --------------------------------------------------------------------------------------------
    Mutant(
        "top_p_drops_boundary_token", "tipjax/sampling.py",
        "n_keep = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)",
        "n_keep = jnp.sum(mass_before + sorted_probs <= top_p, axis=-1, keepdims=True)",
        ("tests/test_sampling.py",),
        "nucleus keeps tokens whose mass including themselves is <= p, dropping the token that crosses p"),
    Mutant(
        "eos_not_marking_done", "tipjax/sampling.py",
        "done = s.done | (live & _is_eos(token, settings.eos_ids))",
        "done = s.done",
        ("tests/test_sampling.py", "tests/test_stop_ids.py"),
        "an EOS token does not finish its row: decoding goes on past it"),
    Mutant(
        "logprob_under_tempered_distribution", "tipjax/sampling.py",
        "logprob = jnp.take_along_axis(jax.nn.log_softmax(s.next_logits, axis=-1)",
        "logprob = jnp.take_along_axis(jax.nn.log_softmax(s.next_logits / (settings.temperature or 1.0), axis=-1)",
        ("tests/test_update_math.py", "tests/test_sampling.py", "tests/test_step_consistency.py"),
        "out.logprobs under the temperature-scaled distribution instead of the unmodified model"),
    Mutant(
        "shared_rows_start_at_the_prompt_start", "tipjax/sampling.py",
        "starts = jnp.zeros_like(lengths)  # the rows' own slots hold their responses, from slot 0",
        "starts = jnp.repeat(starts, samples)",
        ("tests/test_shared_prompt.py",),
        "rows sharing a prompt keep its left-padding start for their own response slots (the kernel then skips "
        "their first responses)"),
    Mutant(
        "shared_groups_concatenated", "tipjax/step.py",
        "jax.random.split(rng, roll.groups))\n        return jax.tree.map(rows.merge, out)",
        "jax.random.split(rng, roll.groups))\n        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)",
        ("tests/test_shared_prompt.py",),
        "rollout groups with shared prompts stacked group after group instead of in rows.split's strided order"),
    Mutant(
        "eval_shared_batch_takes_first_rows", "tipjax/eval.py",
        "batch = data.collate((rows + rows[:1] * (batch_size - len(rows)))[::per], pad_id, buckets)",
        "batch = data.collate((rows + rows[:1] * (batch_size - len(rows)))[:batch_size // per], pad_id, buckets)",
        ("tests/test_eval_cli.py",),
        "an eval batch of whole prompts passes its first batch_size / n rows, not one row per prompt"),
    Mutant(
        "update_never_shares_prompts", "tipjax/step.py",
        "return fits[0] if roll.share_prompt and fits else n",
        "return n",
        ("tests/test_shared_update.py",),
        "the update repeats every prompt per row again (correct, slower): only a structural check sees it"),
    Mutant(
        "update_micro_batches_split_rows_not_prompts", "tipjax/step.py",
        "return {k: rows.split(x, m, settings.split_sharding, group=1 if k in _PROMPT_KEYS else group)",
        "return {k: rows.split(x, m, settings.split_sharding)",
        ("tests/test_shared_update.py",),
        "micro-batches of shared prompts take rows j, j + m, ... whose prompts are not the part's prompts"),
    Mutant(
        "update_prompt_copies_tiled", "tipjax/step.py",
        "return jnp.repeat(x, copies, axis=0)",
        "return jnp.tile(x, (copies,) + (1,) * (x.ndim - 1))",
        ("tests/test_shared_update.py",),
        "with several copies per prompt the copies are laid out prompt after prompt set, not next to their prompt"),
    Mutant(
        "prefixed_rows_one_position_early", "tipjax/models/decoder.py",
        "row_pos = jnp.maximum(prompt_len + jnp.cumsum(row_valid, axis=1, dtype=jnp.int32) - 1, 0)",
        "row_pos = jnp.maximum(prompt_len + jnp.cumsum(row_valid, axis=1, dtype=jnp.int32) - 2, 0)",
        ("tests/test_shared_update.py",),
        "rows that continue a shared prompt are rotated one position early"),
    Mutant(
        "prefixed_first_token_from_prompt_start", "tipjax/step.py",
        "first = jnp.repeat(prompt_hidden[:, -1:], resp_tokens.shape[0] // prompt_ids.shape[0], axis=0)",
        "first = jnp.repeat(prompt_hidden[:, :1], resp_tokens.shape[0] // prompt_ids.shape[0], axis=0)",
        ("tests/test_shared_update.py",),
        "a row's first response token is predicted from the prompt's first column, not its last"),
    Mutant(
        "fused_prefix_prompts_tiled", "tipjax/models/attention.py",
        "return jnp.concatenate([jnp.repeat(prompt_part, rep, axis=0), row_part.astype(prompt_part.dtype)], axis=1)",
        "return jnp.concatenate([jnp.tile(prompt_part, (rep,) + (1,) * (prompt_part.ndim - 1)), "
        "row_part.astype(prompt_part.dtype)], axis=1)",
        ("tests/test_shared_update.py",),
        "the fused backends' repeated prompts follow row b % P instead of b // n"),
    # --- models ----------------------------------------------------------------------------------------------
    Mutant(
        "rope_rotation_sign", "tipjax/models/layers.py",
        "out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)",
        "out = jnp.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)",
        ("tests/test_models_hf.py",),
        "RoPE rotates by -angle (sign of rotate_half flipped); still relative, so only a reference sees it"),
    Mutant(
        "rms_norm_eps_outside_sqrt", "tipjax/models/layers.py",
        "normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)",
        "normed = x32 / (jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True)) + eps)",
        ("tests/test_update_math.py", "tests/test_models_hf.py"),
        "RMSNorm adds eps after the square root instead of inside it"),
    Mutant(
        "qk_norm_skipped", "tipjax/models/decoder.py",
        "if cfg.qk_norm:\n                    q = ops.rms_norm(q, w(blk.q_norm)",
        "if False:\n                    q = ops.rms_norm(q, w(blk.q_norm)",
        ("tests/test_models_hf.py",),
        "Qwen3's per-head q/k RMSNorm is never applied"),
    Mutant(
        "gqa_head_mapping_mod", "tipjax/models/attention.py",
        "return q.reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4)",
        "return q.reshape(b, t, n // kv_heads, kv_heads, h).transpose(0, 3, 2, 1, 4)",
        ("tests/test_models_attention.py", "tests/test_models_hf.py"),
        "GQA query head n reads kv head n % K instead of n // G (xla backend; output heads put back in order)",
        also=(("return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)",
               "return out.transpose(0, 3, 2, 1, 4).reshape(b, t, n, h)"),)),
    Mutant(
        "shared_prompt_padding_visible", "tipjax/models/attention.py",
        "scores_p = jnp.where(prompt_valid[:, None, None, None, None, :], scores_p, _MASKED)",
        "scores_p = jnp.where(prompt_valid[:, None, None, None, None, :] | True, scores_p, _MASKED)",
        ("tests/test_shared_prompt.py", "tests/test_shared_update.py"),
        "xla attention over a shared prompt (rollout and update) sees its left padding and empty slots"),
    Mutant(
        "kernel_prompt_read_past_its_length", "tipjax/models/decode_kernel.py",
        "end=prompt_length)",
        "end=prompt_length + block)",
        ("tests/test_shared_prompt.py",),
        "the decode kernel streams a shared prompt's empty slots past its length"),
    Mutant(
        "kernel_rows_read_the_wrong_prompt", "tipjax/models/decode_kernel.py",
        "lambda i, j, k: (i // samples, j, 0, 0)),  # its keys",
        "lambda i, j, k: (i % (b // samples), j, 0, 0)),  # its keys",
        ("tests/test_shared_prompt.py",),
        "decode kernel row b reads the keys of prompt b mod P instead of b // n (its values stay right)"),
    Mutant(
        "decode_auto_ignores_missing_triton", "tipjax/models/attention.py",
        'auto = platform == "cuda" and triton and fits',
        'auto = platform == "cuda" and fits',
        ("tests/test_decode_paths.py",),
        "a jax without Pallas's Triton backend: 'auto' still picks the Triton decode kernel on CUDA"),
    Mutant(
        "decode_combine_reduces_one_split", "tipjax/models/decode_kernel.py",
        "den = functools.reduce(jnp.add, [w[i] * l[:, :, i] for i in range(splits)])",
        "den = functools.reduce(jnp.add, [w[i] * l[:, :, i] for i in range(splits - 1)])",
        ("tests/test_decode_kernel.py",),
        "the split decode's combine leaves the last split out of the softmax normaliser"),
    # --- training loop, checkpoints ---------------------------------------------------------------------------
    Mutant(
        "prompt_state_not_restored", "tipjax/train.py",
        "source.set_state(prompt_state)",
        "pass",
        ("tests/test_resume.py",),
        "a resumed run restarts the prompt stream from the beginning"),
    Mutant(
        "checkpoint_drops_prompt_state", "tipjax/checkpoint.py",
        "return Restored(step, _from_disk(restored[STATE], abstract_state), restored[PROMPTS])",
        "return Restored(step, _from_disk(restored[STATE], abstract_state), None)",
        ("tests/test_checkpoint_recovery.py", "tests/test_resume.py"),
        "Checkpointer.restore reads the prompt-iterator state but returns None for it"),
    Mutant(
        "profile_stage_from_the_jitted_name", "scripts/profile_summary.py",
        "scopes = segments[1:]",
        "scopes = segments",
        ("tests/test_profile_summary.py",),
        "the profile summary counts every kernel of a function jitted as `update` (the update alone) as the "
        "optimizer stage"),
    # --- grading ---------------------------------------------------------------------------------------------
    Mutant(
        "grading_accepts_any_boxed_answer", "tipjax/grading.py",
        "return bool(normalised) and _normalise(predicted) == normalised",
        "return bool(normalised)",
        ("tests/test_grading.py",),
        "when math-verify says no, any boxed answer is accepted (the string fallback forgets to compare)"),
)
