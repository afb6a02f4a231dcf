r"""One generation of keyed-noise ES, up to (not including) the update.

1. the noise of every perturbed parameter for this generation (``perturbations``);
2. the scores $f_i$ of all $N$ members, each rank scoring its shard (``evaluation``, ``distributed``);
3. the best member, rebuilt from $\theta$ before it moves (``best``);
4. the shaped fitnesses $\tilde f = \mathrm{shape}(f)$ (``shaping``), the pair weights and
   $\hat g_j = \sum_k w_k E_{j,k} / (N\sigma_j)$ of every parameter — handed on as $-\hat g_j$, the gradient
   a ``torch.optim`` rule minimises along — checked finite (``estimate``).

Nothing is written to the trainer or its parameters: [`ESTrainer.step`][eggroll_trainer.ESTrainer.step] then
applies the result all at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from . import distributed
from .best import best_member, rebuild_member
from .estimate import check_finite, estimate, pair_weights, unproven
from .evaluation import check_scores, evaluate_batched, evaluate_sequential, scorer
from .noise import ParamNoise
from .population import Perturbed
from .shaping import shape_fitness

if TYPE_CHECKING:
    from .base import ESTrainer

#: What a generation hands to the update: the ``(N,)`` scores and their finite mask, the new best member's
#: ``(fitness, values)`` (or ``None``), and −ĝ per parameter (``None``: not updated).
Generation = tuple[Tensor, Tensor, "tuple[float, list[Tensor]] | None", "list[Tensor | None]"]


def keyed_generation(trainer: ESTrainer, closure: Callable[[], Any] | None) -> Generation:
    """Score ``trainer``'s population on this generation's keyed noise and estimate ĝ."""
    params, sigmas = trainer._all_params(), trainer._sigmas()
    noises = trainer._generation_noise(trainer.generation)
    scores = evaluate_population(trainer, noises, closure)  # (N,) float64, higher is better
    finite = check_scores(scores, trainer.generation)
    member = best_member(scores, trainer.best_fitness)
    best = None
    if member is not None:
        best = float(scores[member]), rebuild_member(params, noises, sigmas, member, trainer.antithetic)
    shaped = shape_fitness(scores, trainer._shaping, trainer.group_size, trainer.elite_k)
    weights = pair_weights(shaped, trainer.antithetic)  # (P,)
    n = trainer.population_size
    grads = estimate(params, noises, sigmas, weights, n, trainer.chunk_size, descent=True)  # −ĝ
    check_finite(unproven(grads, noises, sigmas, weights, n), trainer.generation)
    return scores, finite, best, grads


def evaluate_population(
    trainer: ESTrainer, noises: list[ParamNoise | None], closure: Callable[[], Any] | None
) -> Tensor:
    """Scores of the whole population, ``(N,)`` float64 on the CPU; this rank evaluates its shard, one member
    at a time or (``batched=True``) in population mode."""
    live = [(p, n, s) for p, n, s in zip(trainer._all_params(), noises, trainer._sigmas()) if n is not None]

    def evaluate(start: int, count: int) -> Tensor:
        if not trainer.batched:
            score = scorer(trainer.model, trainer.fitness_fn, closure)
            return evaluate_sequential(live, start, count, trainer.antithetic, score)
        return evaluate_batched(
            trainer.model, {id(p): Perturbed(n, s) for p, n, s in live}, start, count,
            population_size=trainer.population_size, antithetic=trainer.antithetic, batch_dim=trainer.batch_dim,
            chunk_size=trainer.chunk_size, fitness_fn=trainer.fitness_fn, closure=closure,
        )  # fmt: skip

    return distributed.evaluate_sharded(
        trainer.population_size, evaluate, seed=trainer.seed, generation=trainer.generation
    )
