r"""The ES gradient estimate $\hat g$ from a generation's shaped fitnesses.

Member $i$ was evaluated at $\theta + \sigma s_i E_{k(i)}$; with shaped fitnesses $\tilde f_i$ (higher is
better), parameter $j$'s estimate is

$$\hat g_j = \frac{1}{N\sigma_j} \sum_{i=1}^{N} \tilde f_i\, s_i E_{j,k(i)}
           = \frac{1}{N\sigma_j} \sum_{k=1}^{P} w_k E_{j,k},\qquad w_k = \sum_{i:\,k(i)=k} s_i \tilde f_i ,$$

so the $N$ members fold into $P$ *pair weights* first ($w_k = \tilde f_{2k} - \tilde f_{2k+1}$ for an
antithetic pair) and each parameter needs one weighted sum of its $P$ noises — a chunked GEMM of the
stacked factors for low-rank noise (``noise.ParamNoise.weighted_sum``).

The update is all or nothing: every $\hat g_j$ is computed and
[`check_finite`][eggroll_trainer.updates.estimate.check_finite] checked before any parameter moves.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..noise.params import ParamNoise, member_pairs, num_pairs

#: Table values one chunk of the update GEMM may touch (A and B factors of c pairs): 16 M floats.
UPDATE_CHUNK_VALUES = 1 << 24


def pair_weights(shaped: Tensor, antithetic: bool) -> Tensor:
    r"""$w_k = \sum_{i:\,k(i)=k} s_i \tilde f_i$: ``(N,)`` shaped fitnesses to ``(P,)`` float64 pair weights
    (P = ⌈N/2⌉ with antithetic pairs, N without)."""
    n = shaped.numel()
    if antithetic and n % 2 == 0:  # w_k = f̃_2k − f̃_2k+1: one op, no index tensors
        pairs_view = shaped.double().view(n // 2, 2)
        return pairs_view[:, 0] - pairs_view[:, 1]
    pairs, signs = member_pairs(0, n, antithetic, torch.device("cpu"))
    weights = torch.zeros(num_pairs(n, antithetic), dtype=torch.float64)
    weights.index_add_(0, pairs, signs.double() * shaped)
    return weights


def estimate(
    params: list[Tensor],
    noises: list[ParamNoise | None],
    sigmas: list[float],
    weights: Tensor,
    population_size: int,
    chunk_size: int | None = None,
    *,
    descent: bool = False,
) -> list[Tensor | None]:
    r"""$\hat g_j = \sum_k w_k E_{j,k} / (N \sigma_j)$ for every parameter with noise (``None`` for the others);
    with ``descent=True`` $-\hat g_j$, the gradient a ``torch.optim`` rule minimises along.

    The factor $\pm 1/(N\sigma_j)$ rides on the $P$ weights, so each $m\times n$ estimate is written once by
    its GEMM and never passed over again to scale or negate it.

    Args:
        params: the trained parameters (for the device and dtype of each estimate).
        noises: each parameter's noise this generation, or ``None`` (not perturbed).
        sigmas: each parameter's σ (its group's).
        weights: ``(P,)`` pair weights from [`pair_weights`][eggroll_trainer.updates.estimate.pair_weights].
        population_size: N.
        chunk_size: the trainer's members per population-mode call, if any; it also bounds the pairs per
            chunk of the weighted sum (memory), never the result.
        descent: return $-\hat g_j$ instead of $\hat g_j$.

    Returns:
        One tensor shaped like each parameter (freshly allocated: the caller may overwrite it), or ``None``.
    """
    estimates: list[Tensor | None] = []
    scaled: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}  # parameters of a group share them
    for p, noise, sigma in zip(params, noises, sigmas):
        if noise is None:
            estimates.append(None)
            continue
        chunk = max(1, UPDATE_CHUNK_VALUES // noise.spec.length)
        if chunk_size:
            chunk = min(chunk, max(1, math.ceil(chunk_size / 2)))
        key = (sigma, p.dtype, p.device)
        if key not in scaled:
            scale = (-1.0 if descent else 1.0) / (population_size * sigma)
            scaled[key] = (weights * scale).to(device=p.device, dtype=p.dtype)  # (P,): float64 until the cast
        estimates.append(noise.weighted_sum(scaled[key], chunk))
    return estimates


def unproven(
    grads: list[Tensor | None],
    noises: list[ParamNoise | None],
    sigmas: list[float],
    weights: Tensor,
    population_size: int,
) -> list[Tensor]:
    r"""The estimates whose finiteness the weights do not already prove (``None`` entries dropped).

    Every term, product and partial sum of $\sum_k w_k E_{j,k} / (N\sigma_j)$ is at most
    $B_j = \sum_k |w_k| \max|E_j| / (N\sigma_j)$ in magnitude (up to the sum's rounding, a factor
    $(1+u)^{Pr}$). With finite weights and $B_j$ below the dtype's largest value, nothing can overflow and
    nothing is NaN, so $\hat g_j$ is finite without a pass over its $m\times n$ values; the others (an
    unknown table bound, huge raw fitnesses, half precision) are left to
    [`check_finite`][eggroll_trainer.updates.estimate.check_finite]."""
    total = float(np.abs(weights.detach().cpu().numpy()).sum())  # inf or nan if any weight is: none proven
    left = []
    for g, noise, sigma in zip(grads, noises, sigmas):
        if g is None:
            continue
        bound = noise.entry_bound if noise is not None else None
        if bound is None or not math.isfinite(total) or not g.dtype.is_floating_point:
            left.append(g)
            continue
        info = torch.finfo(g.dtype)
        terms = weights.numel() * (noise.spec.rank or 1) + 3
        if not total * bound / (population_size * sigma) < info.max / math.exp(terms * info.eps):
            left.append(g)
    return left


def check_finite(grads: list[Tensor | None], generation: int) -> None:
    """Raise ``RuntimeError`` if any estimate holds a NaN or inf (``None`` entries are skipped)."""
    if not all(all_finite(g) for g in grads if g is not None):
        raise RuntimeError(f"generation {generation}: the ES estimate is not finite; parameters unchanged")


def all_finite(t: Tensor) -> bool:
    """Whether every value of ``t`` is finite."""
    # min and max are finite iff every value is (NaN propagates): one pass, no temporaries — isfinite().all()
    # costs ~25x more on CPU, a fifth of a whole generation for a 1M-parameter MLP (benchmarks/).
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return math.isfinite(lo.item()) and math.isfinite(hi.item())
