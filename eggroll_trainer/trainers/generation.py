r"""One generation of keyed-noise ES, up to (not including) the update.

1. the noise of every perturbed parameter for this generation (``perturbations``);
2. the scores $f_i$ of all $N$ members, each rank scoring its shard (``evaluation``, ``distributed``):
   ``(N,)``, or ``(N, P)`` when each member gets P scores (one per prompt);
3. the best member, rebuilt from $\theta$ before it moves (``best``), by its mean score over P;
4. the shaped fitnesses $\tilde f = \mathrm{shape}(f)$ (``shaping``: a callable sees the ``(N, P)`` matrix,
   a built-in name its mean over P), the pair weights and
   $\hat g_j = \sum_k w_k E_{j,k} / (N\sigma_j)$ of every parameter — handed on as $-\hat g_j$, the gradient
   a ``torch.optim`` rule minimises along — checked finite (``estimate``).

Nothing is written to the trainer or its parameters: [`ESTrainer.step`][eggroll_trainer.ESTrainer.step] then
applies the result all at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .. import distributed
from ..noise.params import ParamNoise
from ..population import Perturbed
from ..shaping import ShapingFn, member_means, shape_fitness
from ..updates.estimate import check_finite, estimate, pair_weights, unproven
from .best import best_member, rebuild_member
from .evaluation import (
    FitnessFn,
    check_scores,
    evaluate_batched,
    evaluate_sequential,
    member_scorer,
)

#: What a generation hands to the update: the ``(N,)`` scores (means over P) and their finite mask, the new best member's
#: ``(fitness, values)`` (or ``None``), and −ĝ per parameter (``None``: not updated).
Generation = tuple[Tensor, Tensor, "tuple[float, list[Tensor]] | None", "list[Tensor | None]"]


@dataclass(frozen=True)
class GenerationSettings:
    """What one generation reads of its trainer: the population's layout, how it is scored and shaped.

    A snapshot the trainer builds at each ``step`` (so this module never reaches into the trainer).
    """

    model: nn.Module
    fitness_fn: FitnessFn | None
    population_size: int
    antithetic: bool
    shaping: ShapingFn
    group_size: int
    elite_k: int
    batched: bool
    chunk_size: int | None
    batch_dim: int
    seed: int
    track_best: bool = True


def keyed_generation(
    run: GenerationSettings,
    params: list[Tensor],
    sigmas: list[float],
    noises: list[ParamNoise | None],
    *,
    generation: int,
    best_fitness: float | None,
    closure: Callable[[], Any] | None,
) -> Generation:
    """Score the population ``θ + σ s_i E_{k(i)}`` of generation ``generation`` and estimate ĝ.

    Args:
        run: the trainer's settings for this generation.
        params: the trained parameters θ (left as they are).
        sigmas: σ per parameter.
        noises: this generation's noise per parameter (``None``: not perturbed).
        generation: the generation's index (for messages and the distributed check).
        best_fitness: the best score so far; a member that beats it is rebuilt (when ``run.track_best``).
        closure: the ``step(closure)`` loss, or ``None`` to call ``run.fitness_fn``.
    """
    matrix = evaluate_population(run, params, sigmas, noises, generation, closure)  # (N,) or (N, P) float64
    scores = member_means(matrix)  # (N,): metrics and the best member
    finite = check_scores(scores, generation)
    best = None
    if run.track_best:
        member = best_member(scores, best_fitness)
        if member is not None:
            best = float(scores[member]), rebuild_member(params, noises, sigmas, member, run.antithetic)
    shaped = shape_fitness(matrix, run.shaping, run.group_size, run.elite_k)
    weights = pair_weights(shaped, run.antithetic)  # (P,)
    n = run.population_size
    grads = estimate(params, noises, sigmas, weights, n, run.chunk_size, descent=True)  # −ĝ
    check_finite(unproven(grads, noises, sigmas, weights, n), generation)
    return scores, finite, best, grads


def evaluate_population(
    run: GenerationSettings,
    params: list[Tensor],
    sigmas: list[float],
    noises: list[ParamNoise | None],
    generation: int,
    closure: Callable[[], Any] | None,
) -> Tensor:
    """Scores of the whole population, ``(N,)`` or ``(N, P)`` float64 on the CPU; this rank evaluates its
    shard, one member at a time or (``batched=True``) in population mode."""
    live = [(p, n, s) for p, n, s in zip(params, noises, sigmas) if n is not None]

    def evaluate(start: int, count: int) -> Tensor:
        if not run.batched:
            score = member_scorer(run.model, run.fitness_fn, closure)
            return evaluate_sequential(live, start, count, run.antithetic, score)
        return evaluate_batched(
            run.model, {id(p): Perturbed(n, s) for p, n, s in live}, start, count,
            population_size=run.population_size, antithetic=run.antithetic, batch_dim=run.batch_dim,
            chunk_size=run.chunk_size, fitness_fn=run.fitness_fn, closure=closure,
        )  # fmt: skip

    return distributed.evaluate_sharded(run.population_size, evaluate, seed=run.seed, generation=generation)
