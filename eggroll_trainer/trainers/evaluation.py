r"""Scoring a slice of the population: members ``start .. start+count-1`` of one generation.

Member $i$ is $\theta + \sigma s_i E_{k(i)}$: pair $k(i)$ of the generation's keyed noise, sign $s_i = \pm 1$
(``noise.member_pairs``). Two ways to score a slice, with the same scores up to float rounding:

* [`evaluate_sequential`][eggroll_trainer.trainers.evaluation.evaluate_sequential] writes each member into the live
  parameters, calls the fitness function once per member, and restores $\theta$ exactly from a saved copy;
* [`evaluate_batched`][eggroll_trainer.trainers.evaluation.evaluate_batched] calls it once per chunk of members with the
  model in population mode (``eggroll_trainer.population``), where each call returns one score per member.

Scores are float64 on the CPU, **higher is better**: a closure returns a loss, so its values are negated.
A member may have one score or a row of P (one per prompt of a language-model fitness): the slice's scores are
then ``(count, P)`` — a population-mode call returns ``(K, P)``, a sequential call ``(1, P)`` — and every member
of a generation must give the same P.
[`check_scores`][eggroll_trainer.trainers.evaluation.check_scores] then decides what a NaN/inf score means.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..noise.params import ParamNoise, member_pairs
from ..population import Perturbed, PopulationInfo, announce, population_mode

#: ``fitness_fn(model) -> float`` (higher is better), or one score per member in population mode.
FitnessFn = Callable[[nn.Module], Any]


def as_score(value: Any, what: str) -> float:
    """One number from what ``what`` (``"fitness_fn"`` or ``"closure"``) returned: a float, an int or a
    one-element tensor. Raises ``ValueError`` for a larger tensor, ``TypeError`` for anything else."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{what} must return a single number, got a tensor of shape {tuple(value.shape)}"
            )
        return float(value.detach().reshape(()).item())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must return a number, got {type(value).__name__}") from None


def as_row(value: Any, what: str) -> Tensor:
    """One member's scores from what ``what`` returned: a number (a 0-d float64 tensor) or a ``(1, P)`` row of
    per-prompt scores (a ``(P,)`` float64 tensor). Anything else raises, as in ``as_score``."""
    if isinstance(value, Tensor) and value.dim() == 2 and value.shape[0] == 1 and value.shape[1] > 1:
        return value.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    return torch.tensor(as_score(value, what), dtype=torch.float64)


def member_scorer(
    model: nn.Module, fitness_fn: FitnessFn | None, closure: Callable[[], Any] | None
) -> Callable[[], Tensor]:
    """Like ``scorer``, but a member may return a ``(1, P)`` row (``as_row``): a 0-d or ``(P,)`` tensor."""
    if closure is not None:
        return lambda: -as_row(closure(), "closure")
    assert fitness_fn is not None  # the trainer checks this before a generation
    return lambda: as_row(fitness_fn(model), "fitness_fn")


def scorer(
    model: nn.Module, fitness_fn: FitnessFn | None, closure: Callable[[], Any] | None
) -> Callable[[], float]:
    """The score of the model as its parameters stand: ``−closure()`` (a loss) if given, else
    ``fitness_fn(model)``."""
    if closure is not None:
        return lambda: -as_score(closure(), "closure")
    assert fitness_fn is not None  # the trainer checks this before a generation
    return lambda: as_score(fitness_fn(model), "fitness_fn")


def evaluate_sequential(
    live: list[tuple[Tensor, ParamNoise, float]],
    start: int,
    count: int,
    antithetic: bool,
    score: Callable[[], Tensor | float],
) -> Tensor:
    r"""Score members ``start .. start+count-1`` one at a time.

    For each member, every perturbed parameter $\theta_j$ of ``live`` (``(param, noise, σ_j)``) becomes
    $\theta_j + \sigma_j s_i E_{k(i)}$ in place, ``score()`` is called, and $\theta$ is copied back from a
    saved copy, bit for bit (also when ``score`` raises). Run it under ``torch.no_grad()``, as ``step`` does.

    Returns:
        ``(count,)`` float64 scores, or ``(count, P)`` when ``score()`` gives a ``(P,)`` row.
    """
    saved = [p.detach().clone() for p, _, _ in live]
    pairs, signs = member_pairs(start, count, antithetic, torch.device("cpu"))
    rows: list[Tensor] = []
    try:
        for pair, sign in zip(pairs.tolist(), signs.tolist()):
            for p, noise, sigma in live:
                noise.perturb_(p, pair, sign * sigma)
            rows.append(torch.as_tensor(score(), dtype=torch.float64))
            for (p, _, _), theta in zip(live, saved):
                p.copy_(theta)
    finally:
        for (p, _, _), theta in zip(live, saved):
            p.copy_(theta)
    if len({tuple(r.shape) for r in rows}) > 1:
        raise ValueError(
            f"fitness_fn returned scores of different shapes for different members: {sorted({tuple(r.shape) for r in rows})}"
        )
    return torch.stack(rows) if rows else torch.empty(0, dtype=torch.float64)


def evaluate_batched(
    model: nn.Module,
    perturbed: dict[int, Perturbed],
    start: int,
    count: int,
    *,
    population_size: int,
    antithetic: bool,
    batch_dim: int,
    chunk_size: int | None,
    fitness_fn: FitnessFn | None,
    closure: Callable[[], Any] | None,
) -> Tensor:
    """Score members ``start .. start+count-1`` in population mode, ``chunk_size`` members per call (all of
    them when ``None``).

    Each call of ``closure()`` (or ``fitness_fn(model)``) must return one value per member of its chunk,
    ``(K,)``, or one row per member, ``(K, P)`` (P scores each, e.g. one per prompt); a closure's losses are
    negated. ``perturbed`` maps ``id(param)`` to its noise and σ for every perturbed parameter. Unused perturbed
    parameters are reported (a warning) after the first chunk.

    Returns:
        ``(count,)`` or ``(count, P)`` float64 scores.
    """
    chunk = chunk_size or count
    what = "closure" if closure is not None else "fitness_fn"
    parts: list[Tensor] = []
    for first in range(start, start + count, chunk):
        size = min(chunk, start + count - first)
        with population_mode(model, perturbed, first, size, population_size, antithetic, batch_dim) as pm:
            out = closure() if closure is not None else fitness_fn(model)  # type: ignore[misc]
        if first == start:
            pm.warn_unused()
        values = torch.as_tensor(out.detach() if isinstance(out, Tensor) else out, dtype=torch.float64).cpu()
        values = values.reshape(-1) if values.dim() <= 1 else values
        if values.shape[:1] != (size,) or values.dim() > 2:
            raise ValueError(
                f"batched {what} must return {size} values (one per member) or a ({size}, P) matrix (one row per "
                f"member), got shape {tuple(values.shape)}"
            )
        if parts and values.shape[1:] != parts[0].shape[1:]:
            raise ValueError(
                f"batched {what} returned rows of {tuple(values.shape[1:])} scores after {tuple(parts[0].shape[1:])}: "
                "every call of a generation must give each member the same number of scores"
            )
        parts.append(-values if closure is not None else values)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def evaluate_center(model: nn.Module, fitness_fn: FitnessFn, batched: bool) -> float:
    """``fitness_fn(model)`` of the unperturbed model; with ``batched`` inside a population of one member, so
    that a fitness function written for population mode serves as it is. A ``(1, P)`` row gives its mean."""
    with torch.no_grad():
        if batched:
            with announce(PopulationInfo(size=1, start=0, total=1)):
                return float(as_row(fitness_fn(model), "fitness_fn").mean())
        return float(as_row(fitness_fn(model), "fitness_fn").mean())


def check_scores(scores: Tensor, generation: int) -> Tensor:
    """The finite mask of a generation's ``(N,)`` scores.

    Non-finite scores rank worst (``shaping.finite_or_worst``) with a ``RuntimeWarning`` attributed to the
    user's code (the ``step()`` or ``train()`` call); when no score is finite a ``RuntimeError`` stops the
    generation before any parameter moves."""
    finite = np.isfinite(scores.detach().cpu().numpy())  # (N,): numpy, a few µs on a CPU vector
    bad = finite.size - int(np.count_nonzero(finite))
    if bad == finite.size:
        raise RuntimeError(
            f"generation {generation}: no member returned a finite fitness; parameters unchanged"
        )
    if bad:
        warnings.warn(
            f"generation {generation}: {bad} of {scores.numel()} fitness values are NaN/inf; they are ranked worst",
            RuntimeWarning,
            stacklevel=_outside_stacklevel(),
        )
    return torch.from_numpy(finite)


#: Frames of these folders are not the user's: this package and torch (``step``'s decorators).
_INSIDE = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(torch.__file__) + os.sep)


def _outside_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the caller: the first frame outside this package and torch
    (what Python 3.12's ``skip_file_prefixes`` does)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    return level
