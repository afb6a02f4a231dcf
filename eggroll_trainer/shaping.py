"""Fitness shaping: pure functions ``(N,) scores -> (N,) weights``, higher is better.

* ``zscore`` (default): (f - mean f) / std f.
* ``centered_rank``: ranks mapped linearly to [-0.5, 0.5] (OpenAI-ES); tied scores share their average rank.
* ``raw``: the scores unchanged.
* any callable with the same signature.

``group_normalize`` adds the GRPO-like baseline of the EGGROLL paper (§6.3): subtract the mean of each
block of G consecutive members, divide by the *global* std. Applied after a shaping function, so with
``zscore`` it equals HyperscaleES' ``(f - mean_group f) / std f``.

``elite_pairs`` keeps only the best ``k`` antithetic pairs (ARS' top-b directions, Mania et al. 2018):
applied last, to the shaped (and group-normalised) weights, so it composes with every option above.

Non-finite scores are replaced before shaping by ``finite_or_worst``: they rank below every finite score.

**Score matrices.** A language-model fitness may give each member P scores, one per prompt: ``(N, P)``.
The built-in shapings above then apply to each member's mean over P; any other callable receives the
matrix and returns ``(N,)``. For sparse 0/1 rewards: ``prompt_baseline`` (per-prompt z-scores, or per-prompt
centred ranks with ties averaged) and ``mirrored_sign`` (the sign of each antithetic pair's difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

ShapingFn = Callable[[Tensor], Tensor]

_EPS = 1e-8


def _within_rounding(spread: float, magnitude: float, n: int, dtype: torch.dtype) -> bool:
    """Whether a spread around the mean, ``max|f - mean|``, is rounding noise: the mean of n equal values is
    only exact to ~n ulps (8·n·eps·max|f|), and dividing that noise by a noise-sized std would amplify it.
    (The spread, not the std: the std's square may underflow for tiny, distinct scores.)"""
    return spread <= 8 * n * torch.finfo(dtype).eps * magnitude


def _over_std(centered: Tensor, std: Tensor, values: Tensor) -> Tensor:
    """centered / std — or zeros when the spread is rounding noise (``_within_rounding``)."""
    spread, magnitude = torch.stack([centered.abs().max(), values.abs().max()]).tolist()  # one sync
    if _within_rounding(spread, magnitude, values.numel(), values.dtype):
        return torch.zeros_like(centered)
    return centered / (std + _EPS)


def zscore(scores: Tensor) -> Tensor:
    """(f - mean) / std (population std); all-equal scores give zeros (up to rounding: ``_within_rounding``)."""
    std, mean = torch.std_mean(scores, correction=0)
    lo, hi = torch.aminmax(scores)
    mean_f, std_f, lo_f, hi_f = torch.stack([mean, std, lo, hi]).tolist()  # one sync for four numbers
    if _within_rounding(
        max(hi_f - mean_f, mean_f - lo_f), max(abs(lo_f), abs(hi_f)), scores.numel(), scores.dtype
    ):
        return torch.zeros_like(scores)
    return (scores - mean_f) / (std_f + _EPS)


def centered_rank(scores: Tensor) -> Tensor:
    r"""Rank of each score mapped to [-0.5, 0.5]: the worst gets -0.5, the best +0.5.

    Tied scores share their average rank (as ``scipy.stats.rankdata``), so equal scores get equal weights:
    an antithetic pair that ties contributes nothing, and a constant fitness gives all zeros. (Breaking ties by
    member index would rank one mirror above its partner and move θ along noise the fitness never saw.)
    """
    n = scores.numel()
    if n == 1:
        return torch.zeros_like(scores)
    ordered, order = torch.sort(scores, stable=True)  # (N,), (N,)
    _, tie_group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # (groups,): the rank of each tie group's first member
    average = first.to(scores.dtype) + (counts - 1).to(scores.dtype) / 2  # (groups,)
    ranks = torch.empty_like(scores)
    ranks[order] = average[tie_group]
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
    return _over_std(centered, global_std, weights)


def elite_pairs(weights: Tensor, k: int) -> Tensor:
    r"""ARS' top-b directions: keep the ``k`` antithetic pairs with the best $\max(w^+, w^-)$, zero the rest.

    Members $2j$ and $2j+1$ are pair $j$ (signs $+1$/$-1$). The $2k$ kept weights are centred and divided
    by their (population) standard deviation $\sigma_R$, then multiplied by $N/(2k)$; every other member
    gets weight 0. The trainer's estimate $\frac{1}{N\sigma}\sum_i \tilde f_i s_i E_i$ then becomes

    $$\hat g = \frac{1}{2k\,\sigma} \sum_{j \in \text{top } k} \frac{w_j^+ - w_j^-}{\sigma_R} E_j,$$

    ARS' update direction $\frac{1}{b\,\sigma_R}\sum (r^+ - r^-)\delta$ divided by $2\sigma$ (so ARS' step
    size α is ``lr = 2 σ α`` with plain SGD). With ``raw`` or ``zscore`` weights this is exactly ARS (a
    pair's difference over the std of the kept returns; centring does not change a difference); with
    ``centered_rank`` the kept members' ranks are used; with ``k = N/2`` it equals ``zscore``. Pairs rank by
    their best member, ties by pair index; a non-finite weight ranks worst (``finite_or_worst``).

    Args:
        weights: (N,) shaped fitness, N even, members 2j and 2j+1 antithetic.
        k: pairs kept, 1 ≤ k ≤ N/2.

    Returns:
        (N,) weights: zero outside the kept pairs.
    """
    n = weights.numel()
    if n % 2 or not 1 <= k <= n // 2:
        raise ValueError(f"Invalid elite_k: {k} (needs 1 ≤ elite_k ≤ N/2 = {n / 2:g} with an even N = {n})")
    pairs = clean_scores(weights).view(n // 2, 2)  # (P, 2): row j = (w⁺, w⁻)
    order = torch.argsort(pairs.max(dim=1).values, descending=True, stable=True)  # (P,)
    keep = torch.zeros(n // 2, dtype=torch.bool, device=weights.device)
    keep[order[:k]] = True
    kept = pairs[keep]  # (k, 2)
    centered = kept - kept.mean()
    scaled = centered / (centered.pow(2).mean().sqrt() + _EPS) * (n / (2 * k))
    out = torch.zeros_like(pairs)
    out[keep] = scaled
    return out.view(n)


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


def clean_scores(scores: Tensor) -> Tensor:
    """``scores`` with NaN/±inf ranked worst (``finite_or_worst``); ``scores`` itself when all are finite,
    found by one reduction: a sum is finite only if every term is (one that overflows takes the long way)."""
    if math.isfinite(float(scores.sum())):
        return scores
    return finite_or_worst(scores)[0]


def shape_fitness(scores: Tensor, shaping: ShapingFn, group_size: int = 0, elite_k: int = 0) -> Tensor:
    """The full pipeline: non-finite → worst, shaping, optional group normalisation, then (``elite_k > 0``)
    only the best ``elite_k`` antithetic pairs kept (``elite_pairs``).

    ``scores`` is ``(N,)`` or ``(N, P)``; a built-in shaping (``SHAPINGS``) sees each member's mean over P, any
    other callable the matrix itself. Returns ``(N,)`` weights."""
    clean = clean_scores(scores)
    if shaping in SHAPINGS.values():
        clean = member_means(clean)
    weights = shaping(clean)
    if weights.shape != clean.shape[:1]:
        raise ValueError(
            f"fitness_shaping returned shape {tuple(weights.shape)}, expected {tuple(clean.shape[:1])}"
        )
    if group_size > 0:
        weights = group_normalize(weights, group_size)
    if elite_k > 0:
        weights = elite_pairs(weights, elite_k)
    return weights


# ------------------------------------------------------------------------- (N, P) score matrices
PROMPT_SCALES = ("std", "rank", "none")


def member_means(scores: Tensor) -> Tensor:
    """Each member's score, ``(N,)``: ``scores`` itself, or the mean of a member's row of ``(N, P)`` scores
    (the score that metrics, the best member and the built-in shapings use)."""
    return scores.mean(dim=1) if scores.dim() == 2 else scores


def prompt_baseline(scores: Tensor, scale: str = "std") -> Tensor:
    r"""Per-prompt shaping of an ``(N, P)`` reward matrix (member i, prompt p) into ``(N,)`` weights.

    Each prompt is shaped over the members, then each member's mean over prompts is z-scored:

    $$a_{ip} = \frac{r_{ip} - \bar r_p}{s_p + \epsilon},\qquad \bar r_p = \tfrac1N\sum_j r_{jp},\quad
    s_p^2 = \tfrac1N\sum_j (r_{jp} - \bar r_p)^2,\qquad \tilde f_i = \mathrm{zscore}_i\Big(\tfrac1P\sum_p
    a_{ip}\Big).$$

    Subtracting $\bar r_p$ alone changes nothing — it shifts every member's mean by the same constant, which
    the final z-score removes — so the baseline matters through $s_p$: a prompt that every member gets right
    (or wrong) contributes nothing, and one that splits the population counts in proportion to how it splits
    it, however rare its successes (GRPO's per-prompt advantage).

    Args:
        scores: ``(N, P)`` rewards (an ``(N,)`` vector is one prompt). Non-finite ones rank worst within
            their prompt.
        scale: ``"std"`` (the formula above), ``"rank"`` ($a_{ip}$ = centred rank of $r_{ip}$ among the
            members, ties averaged: ``centered_rank`` of each prompt) or ``"none"`` ($a_{ip} = r_{ip} - \bar r_p$: the
            z-score of the mean reward).

    Returns:
        ``(N,)`` weights, zero mean and unit std (all zeros when no prompt separates the members).
    """
    if scale not in PROMPT_SCALES:
        raise ValueError(f"Invalid scale: {scale!r} (expected one of {PROMPT_SCALES})")
    r = torch.as_tensor(scores, dtype=torch.float64)
    r = r.unsqueeze(1) if r.dim() == 1 else r
    if r.dim() != 2 or r.shape[0] == 0:
        raise ValueError(f"prompt_baseline: scores must be (N, P), got {tuple(r.shape)}")
    finite = torch.isfinite(r)
    low = torch.where(finite, r, torch.inf).amin(dim=0, keepdim=True)  # (1, P) worst finite
    r = torch.where(finite, r, torch.nan_to_num(low, posinf=0.0) - 1.0)
    if scale == "rank":
        advantages = torch.stack([centered_rank(column) for column in r.T], dim=1)  # (N, P)
    else:
        advantages = r - r.mean(dim=0, keepdim=True)  # (N, P)
        if scale == "std":
            spread = advantages.abs().amax(dim=0, keepdim=True)  # (1, P)
            noise = 8 * r.shape[0] * torch.finfo(r.dtype).eps * r.abs().amax(dim=0, keepdim=True)
            std = advantages.pow(2).mean(dim=0, keepdim=True).sqrt()
            advantages = torch.where(spread <= noise, 0.0, advantages / (std + _EPS))
    return zscore(advantages.mean(dim=1)).to(torch.as_tensor(scores).dtype)


def mirrored_sign(scores: Tensor) -> Tensor:
    r"""The sign of each antithetic pair's difference (EGGROLL paper, App. D): ``(N,)`` or ``(N, P)`` → ``(N,)``.

    Members $2k$ and $2k+1$ are the mirrored pair $\theta \pm \sigma E_k$ (``antithetic=True``); with
    $f_i$ the mean over P, $\tilde f_{2k} = \mathrm{sign}(f_{2k} - f_{2k+1})$ and $\tilde f_{2k+1} =
    -\tilde f_{2k}$: every pair moves θ by the same amount, towards its better member, and a tie moves
    nothing. Robust to outliers and to the scale of sparse rewards; ±1 has the unit RMS of ``zscore``.
    """
    f = member_means(scores)
    n = f.numel()
    if n % 2:
        raise ValueError(f"mirrored_sign needs antithetic pairs: an even population, got N = {n}")
    pairs = f.view(n // 2, 2)
    sign = torch.sign(pairs[:, 0] - pairs[:, 1])  # (N/2,)
    return torch.stack([sign, -sign], dim=1).reshape(n)
