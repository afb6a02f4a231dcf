r"""Choosing σ for a language model: how far does a member stray from the base model?

Qiu et al. (2025) give the rule: perturbed models must "give reasonable results, but behave differently from
the original" (on Qwen-0.5B, σ ≥ 5·10⁻³ destroyed the model). [`calibrate_sigma`][eggroll_trainer.llm.calibration.calibrate_sigma]
measures both halves for a list of σ, with the trainer's own noise (rank r, the chosen matrices), in
population mode — one ``generate`` and one prefill of the K·P rows per σ:

* ``differ``: the fraction of (member, prompt) rows whose greedy completion differs from the base model's.
  Near 0 the members all answer alike and every reward ties: ES sees nothing. Near 1 every member has
  drifted.
* ``mean_abs_dlogp``: $\frac{1}{KP}\sum_{i,p} |\log p_{\theta+\sigma E_i}(y_p \mid x_p) - \log p_\theta(y_p \mid
  x_p)|$, the change of the log-likelihood of the base model's own answer $y_p$ (summed over its tokens,
  teacher-forced). Small (≪ 1 nat) means "reasonable"; several nats means the member no longer believes
  the base answer.

A σ where a good share of rows differ (say 20–60 %) while the base answer stays likely (|Δ log p| around or
below one nat) is where ES has something to choose between.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .fitness import members_now, population_generate


def _answer_logp(model: Any, ids: Tensor, mask: Tensor, answer: Tensor, answer_mask: Tensor) -> Tensor:
    """``(K, P)``: log p of each prompt's ``answer`` tokens (``(P, T_a)``, ``answer_mask`` 0 after the end),
    teacher-forced, for every member the current forward holds (K·P rows, member-major)."""
    k = members_now()
    full = torch.cat([ids, answer], dim=1).repeat(k, 1)  # (K·P, T + T_a)
    full_mask = torch.cat([mask, answer_mask], dim=1).repeat(k, 1)
    positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: positions count real tokens
    t_a = answer.shape[1]
    keep = (
        {"logits_to_keep": t_a + 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    )
    logits = model(
        input_ids=full, attention_mask=full_mask, position_ids=positions, **keep
    ).logits  # (K·P, ·, V)
    logits = logits[:, -t_a - 1 : -1].float()  # (K·P, T_a, V): the positions that predict the answer
    logp = torch.log_softmax(logits, dim=-1).gather(2, full[:, -t_a:, None]).squeeze(2)  # (K·P, T_a)
    return (logp * answer_mask.repeat(k, 1)).sum(dim=1).view(k, -1)  # (K, P)


@torch.no_grad()
def calibrate_sigma(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    sigmas: Sequence[float],
    *,
    params: Sequence[Tensor] | None = None,
    members: int = 8,
    rank: int = 1,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> list[dict[str, float]]:
    """For each σ, how often a member's greedy output differs from the base model's, and how much the log
    probability of the base model's answer moves (see the module docstring).

    Args:
        model: a Hugging Face causal LM (left-padding tokenizer); its weights are left as they were.
        tokenizer: its tokenizer.
        prompts: the P prompts to answer (a sample of the training prompts).
        sigmas: the noise scales to try.
        params: the matrices ES will perturb (default: ``select_targets(model, "all-linear").params``).
        members: K members per σ (antithetic pairs: even).
        rank: the noise rank r of the run.
        max_new_tokens: decoding length.
        seed: noise seed (the same members, scaled, for every σ).

    Returns:
        One dict per σ: ``sigma``, ``differ`` (fraction of rows), ``mean_abs_dlogp`` (nats per answer),
        ``members``, ``prompts``.
    """
    from .. import EGGROLLTrainer
    from .models import select_targets

    if members < 2 or members % 2:
        raise ValueError(f"Invalid members: {members} (an even number ≥ 2: antithetic pairs)")
    if not prompts:
        raise ValueError("calibrate_sigma: no prompts")
    if any(not s > 0 for s in sigmas):
        raise ValueError(f"Invalid sigmas: {list(sigmas)} (each must be > 0)")
    pad = tokenizer.pad_token_id
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    base = population_generate(model, ids, mask, max_new_tokens=max_new_tokens, pad_token_id=pad)[
        0
    ]  # (P, T_a)
    ended = torch.zeros_like(base, dtype=torch.bool)  # tokens after the end of the answer are not scored
    if tokenizer.eos_token_id is not None:
        ended[:, 1:] = (base == tokenizer.eos_token_id).cumsum(dim=1)[:, :-1] > 0
    answer_mask = (~ended).to(mask.dtype)
    base_logp = _answer_logp(model, ids, mask, base, answer_mask)[0]  # (P,)
    chosen = list(params) if params is not None else select_targets(model, "all-linear").params

    rows = []
    seen: dict[str, Tensor] = {}  # what the probe measured for the current σ
    for sigma in sigmas:

        def probe(m: Any) -> Tensor:
            new = population_generate(
                m, ids, mask, max_new_tokens=max_new_tokens, pad_token_id=pad
            )  # (K, P, T)
            t = min(new.shape[2], base.shape[1])
            same = (new[:, :, :t] == base[None, :, :t]) | ~answer_mask[None, :, :t].bool()
            seen["differ"] = (~same.all(dim=2)).double()  # (K, P)
            seen["dlogp"] = (
                (_answer_logp(m, ids, mask, base, answer_mask) - base_logp).abs().double()
            )  # (K, P)
            return seen["differ"].mean(dim=1)

        trainer = EGGROLLTrainer(
            chosen, model, probe, population_size=members, learning_rate=0.0, sigma=float(sigma), rank=rank,
            freeze_nonlora=True, batched=True, seed=seed, track_best=False,
        )  # fmt: skip
        saved = [p.detach().clone() for p in chosen]
        try:
            trainer.step()
        finally:
            for p, value in zip(chosen, saved):
                p.copy_(value)
        rows.append(
            dict(
                sigma=float(sigma),
                differ=float(seen["differ"].mean()),
                mean_abs_dlogp=float(seen["dlogp"].mean()),
                members=members,
                prompts=len(prompts),
            )  # fmt: skip
        )
    return rows
