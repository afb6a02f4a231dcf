"""Fitness shaping: pure functions ``(N,) scores -> (N,) weights``, higher is better.

* ``zscore`` (default): (f - mean f) / std f.
* ``centered_rank``: ranks mapped linearly to [-0.5, 0.5] (OpenAI-ES; ties broken by member index).
* ``raw``: the scores unchanged.
* any callable with the same signature.

``group_normalize`` adds the GRPO-like baseline of the EGGROLL paper (§6.3): subtract the mean of each
block of G consecutive members, divide by the *global* std. Applied after a shaping function, so with
``zscore`` it equals HyperscaleES' ``(f - mean_group f) / std f``.

Non-finite scores are replaced before shaping by ``finite_or_worst``: they rank below every finite score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ShapingFn = Callable[[Tensor], Tensor]

_EPS = 1e-8


def zscore(scores: Tensor) -> Tensor:
    """(f - mean) / std (population std); all-equal scores give zeros."""
    centered = scores - scores.mean()
    return centered / (centered.pow(2).mean().sqrt() + _EPS)


def centered_rank(scores: Tensor) -> Tensor:
    """Rank of each score mapped to [-0.5, 0.5]: the worst gets -0.5, the best +0.5."""
    n = scores.numel()
    if n == 1:
        return torch.zeros_like(scores)
    ranks = torch.empty_like(scores)
    order = torch.argsort(scores, stable=True)
    ranks[order] = torch.arange(n, dtype=scores.dtype, device=scores.device)
    return ranks / (n - 1) - 0.5


def raw(scores: Tensor) -> Tensor:
    """The scores unchanged."""
    return scores.clone()


SHAPINGS: dict[str, ShapingFn] = {"zscore": zscore, "centered_rank": centered_rank, "raw": raw}


def resolve_shaping(shaping: str | ShapingFn) -> ShapingFn:
    """Turn a name from ``SHAPINGS`` or a callable into a shaping function; anything else is an error."""
    if callable(shaping):
        return shaping
    if isinstance(shaping, str) and shaping in SHAPINGS:
        return SHAPINGS[shaping]
    raise ValueError(
        f"Invalid fitness_shaping: {shaping!r} (expected one of {sorted(SHAPINGS)} or a callable)"
    )


def group_normalize(weights: Tensor, group_size: int) -> Tensor:
    """Subtract each block's mean (blocks of ``group_size`` consecutive members), divide by the global std."""
    n = weights.numel()
    if group_size <= 0 or group_size == n:
        centered = weights - weights.mean()
    else:
        blocks = weights.view(n // group_size, group_size)
        centered = (blocks - blocks.mean(dim=1, keepdim=True)).view(n)
    global_std = (weights - weights.mean()).pow(2).mean().sqrt()
    return centered / (global_std + _EPS)


def finite_or_worst(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Replace NaN/±inf by a value below every finite score. Returns (clean scores, finite mask).

    The replacement is ``min - (1 + spread)`` where spread = max - min of the finite scores, so it ranks
    last under every shaping without dwarfing the finite scores' scale."""
    finite = torch.isfinite(scores)
    if bool(finite.all()) or not bool(finite.any()):
        return scores, finite
    good = scores[finite]
    worst = good.min() - (1.0 + (good.max() - good.min()))
    return torch.where(finite, scores, worst), finite


def shape_fitness(scores: Tensor, shaping: ShapingFn, group_size: int = 0) -> Tensor:
    """The full pipeline: non-finite → worst, shaping, then optional group normalisation."""
    clean, _ = finite_or_worst(scores)
    weights = shaping(clean)
    if weights.shape != clean.shape:
        raise ValueError(
            f"fitness_shaping returned shape {tuple(weights.shape)}, expected {tuple(clean.shape)}"
        )
    if group_size > 0:
        weights = group_normalize(weights, group_size)
    return weights
