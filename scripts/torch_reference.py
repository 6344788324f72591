"""The baseline for bench_train.py: one OPD step written the straightforward PyTorch + transformers way.

student.generate(do_sample, temperature 1, top_k 0, top_p 1) -> teacher forward (no grad) -> student forward ->
full-vocabulary reverse KL (token mean over the kept response tokens; soft_or selection as in the paper: clipped
min-max entropy and rkl, score 1-(1-h)(1-d), top floor(r*m_i) per row) -> backward -> clip_grad_norm_ -> AdamW.
Models are built from the same HF config dicts as tipjax's (random weights, fp32).
"""

from __future__ import annotations

import math

import torch
import transformers


def torch_models(cfg):
    """(student, teacher, AdamW) from the TrainConfig's student/teacher arch dicts and optimizer settings."""
    torch.manual_seed(0)
    built = []
    for spec in (cfg.student, cfg.teacher):
        hf = transformers.Qwen3Config(**{k: v for k, v in spec.arch.items() if k not in ("architectures",
                                                                                             "model_type")})
        built.append(transformers.Qwen3ForCausalLM(hf).float())
    student, teacher = built
    teacher.eval().requires_grad_(False)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.optim.learning_rate, betas=(cfg.optim.b1, cfg.optim.b2),
                            eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    return student, teacher, opt


def torch_soft_or_keep(entropy, rkl, mask, ratio, clip_quantile=0.98):
    """Soft-OR top floor(ratio * m_i) per row; batch-scope clipped min-max of entropy, min-max of rkl. [B, N] bool."""
    valid = mask.bool()

    def min_max(x):
        lo, hi = x[valid].min(), x[valid].max()
        return torch.where(valid, (x - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(x))

    h = torch.minimum(entropy, torch.quantile(entropy[valid], clip_quantile))
    score = 1.0 - (1.0 - min_max(h)) * (1.0 - min_max(rkl))
    score = torch.where(valid, score, torch.full_like(score, -math.inf))
    k = torch.floor(ratio * valid.sum(-1).float()).long()
    order = torch.argsort(score, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    return (rank < k[:, None]) & valid


def torch_step(student, teacher, opt, prompt_ids, prompt_mask, cfg):
    """One OPD step; returns (number of response tokens, loss)."""
    n, new = cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens
    eos = student.config.eos_token_id
    ids = torch.from_numpy(prompt_ids).long().repeat_interleave(n, 0)
    pmask = torch.from_numpy(prompt_mask).long().repeat_interleave(n, 0)
    tp = ids.shape[1]
    # 1. rollout
    student.eval()
    with torch.no_grad():
        seq = student.generate(input_ids=ids, attention_mask=pmask, do_sample=True, temperature=1.0, top_k=0,
                               top_p=1.0, max_new_tokens=new, eos_token_id=eos, pad_token_id=eos)
    student.train()
    resp = seq[:, tp:]
    is_eos = (resp == eos).long()
    resp_mask = ((torch.cumsum(is_eos, 1) - is_eos) == 0).long()  # up to and including the first EOS
    attn = torch.cat([pmask, resp_mask], 1)
    pos = (torch.cumsum(attn, 1) - 1).clamp_min(0)
    # 2. teacher scoring (no grad); 3. student forward with grad, response-predicting positions only
    with torch.no_grad():
        t_logits = teacher(input_ids=seq, attention_mask=attn, position_ids=pos).logits[:, tp - 1:-1].float()
    s_logits = student(input_ids=seq, attention_mask=attn, position_ids=pos).logits[:, tp - 1:-1].float()
    log_s, log_t = torch.log_softmax(s_logits, -1), torch.log_softmax(t_logits, -1)
    rkl = (log_s.exp() * (log_s - log_t)).sum(-1)  # [B, N] full-vocabulary reverse KL
    mask = resp_mask.float()
    if cfg.selection.rule == "all":
        keep = mask
    elif cfg.selection.rule == "soft_or":
        with torch.no_grad():
            entropy = -(log_s.exp() * log_s).sum(-1) / math.log(s_logits.shape[-1])
            keep = torch_soft_or_keep(entropy, rkl.detach(), mask, cfg.selection.ratio).float()
    else:
        raise ValueError(f"the PyTorch reference implements all and soft_or, not {cfg.selection.rule}")
    loss = (rkl * keep).sum() / keep.sum().clamp_min(1.0)
    # 4. update
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.grad_clip)
    opt.step()
    return int(resp_mask.sum()), float(loss.detach())
