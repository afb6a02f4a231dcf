r"""The best member evaluated so far: kept as parameter values, rebuilt from its noise key.

After generation $t$ the trainer keeps $\theta_t + \sigma s_{i^*} E_{k(i^*)}$ for the member $i^*$ of highest
finite score, when that score beats every earlier one. It is rebuilt from $\theta_t$ (before the update moves
it) with exactly the operations sequential evaluation used, so
[`get_best_model`][eggroll_trainer.ESTrainer.get_best_model] returns bit for bit the parameters that earned
the score (within float tolerance of a batched forward, which sums in another order).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor, nn

from ..noise.params import ParamNoise, member_pairs


def best_member(scores: Tensor, best_so_far: float | None) -> int | None:
    """Index of the generation's best member if its finite score beats ``best_so_far``, else ``None``."""
    values = scores.detach().cpu().numpy()  # (N,): numpy, a few µs on a CPU vector
    member = int(np.argmax(np.where(np.isfinite(values), values, -np.inf)))  # the first of equal bests
    value = float(values[member])
    if not math.isfinite(value) or (best_so_far is not None and value <= best_so_far):
        return None
    return member


def rebuild_member(
    params: list[Tensor], noises: list[ParamNoise | None], sigmas: list[float], member: int, antithetic: bool
) -> list[Tensor]:
    """Member ``member``'s parameter values θ + σ s E, fresh tensors (θ is left as it is)."""
    pairs, signs = member_pairs(member, 1, antithetic, torch.device("cpu"))
    values = []
    for p, noise, sigma in zip(params, noises, sigmas):
        value = p.detach().clone()
        if noise is not None:
            noise.perturb_(value, int(pairs[0]), float(signs[0]) * sigma)
        values.append(value)
    return values


def best_model(model: nn.Module, params: list[Tensor], best: list[Tensor] | None) -> nn.Module:
    """A deep copy of ``model`` whose parameters ``params`` hold the values ``best`` (``model`` itself is
    untouched; with ``best=None`` the copy is simply ``model``'s)."""
    copied = copy.deepcopy(model)
    if best is None:
        return copied
    names = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
    with torch.no_grad():
        for p, value in zip(params, best):
            if id(p) not in names:
                raise ValueError("get_best_model(): a trained parameter is not a parameter of `model`")
            copied.get_parameter(names[id(p)]).copy_(value)
    return copied


def restored(saved: list[Tensor] | None, params: list[Tensor]) -> list[Tensor] | None:
    """Best values loaded from a checkpoint, on each parameter's device and dtype (copies)."""
    if saved is None:
        return None
    return [t.to(device=p.device, dtype=p.dtype).clone() for t, p in zip(saved, params)]
