r"""The eggroll-trainer 0.1.0 protocol: ES on one flat parameter vector.

A subclass of [`ESTrainer`][eggroll_trainer.ESTrainer] that overrides
[`sample_perturbations`][eggroll_trainer.ESTrainer.sample_perturbations] (``N -> (N, D)`` unit perturbations
$\varepsilon_i$) and/or [`compute_update`][eggroll_trainer.ESTrainer.compute_update] (``(N, D), (N,) -> (D,)``
ascent direction $u$) gets this generation:

$$f_i = F(\theta + \sigma\varepsilon_i),\qquad \theta \leftarrow \mathrm{rule}(\theta, \hat g = u),$$

with $\theta$ restored exactly after each member (0.1.0 left the last member's parameters in the model) and
non-finite $f_i$ replaced by a value below every finite one. The defaults reproduce the keyed-noise ES:
$\varepsilon$ are the generation's noises, densified, and $u = \sum_i \tilde f_i \varepsilon_i / (N\sigma)$.
Costs O(N·D) memory: for small models and custom algorithms, not for training large ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..noise.params import ParamNoise, member_pairs
from ..shaping import ShapingFn, clean_scores, shape_fitness
from ..updates.estimate import check_finite
from .best import best_member
from .evaluation import check_scores
from .generation import Generation

#: ``sample_perturbations(N) -> (N, D)`` and ``compute_update((N, D), (N,)) -> (D,)``: a trainer's flat hooks.
SampleFn = Callable[[int], Tensor]
UpdateFn = Callable[[Tensor, Tensor], Tensor]


def dense_perturbations(
    params: list[Tensor], noises: list[ParamNoise | None], population_size: int, antithetic: bool
) -> Tensor:
    """``(N, D)``: row i is member i's signed noise $s_i E_{k(i)}$ of every parameter, flattened and
    concatenated in parameter order (zeros for parameters without noise)."""
    device = params[0].device
    pairs, signs = member_pairs(0, population_size, antithetic, device)  # (N,) each, where θ lives
    rows = []
    for i in range(population_size):
        parts = []
        for p, noise in zip(params, noises):
            if noise is None:
                parts.append(torch.zeros(p.numel(), device=p.device, dtype=p.dtype))
            else:
                parts.append(noise.dense(pairs[i : i + 1], signs[i : i + 1])[0].reshape(-1))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def es_update(
    perturbations: Tensor, fitnesses: Tensor, shaping: ShapingFn, group_size: int, sigma: float
) -> Tensor:
    r"""$u = \sum_i \tilde f_i \varepsilon_i / (N\sigma)$ with $\tilde f$ = ``shaping`` (then ``group_size``
    normalisation) of ``fitnesses``: ``(N, D), (N,) -> (D,)``."""
    shaped = shape_fitness(fitnesses.double().cpu(), shaping, group_size)
    shaped = shaped.to(device=perturbations.device, dtype=perturbations.dtype)
    return shaped @ perturbations / (perturbations.shape[0] * sigma)


def split(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    """``flat`` cut into one piece per parameter (views, each of ``p.numel()`` values, not reshaped)."""
    out, index = [], 0
    for p in params:
        out.append(flat[index : index + p.numel()])
        index += p.numel()
    return out


def flat_generation(
    params: list[Tensor],
    sample_perturbations: SampleFn,
    compute_update: UpdateFn,
    score: Callable[[], float],
    *,
    population_size: int,
    sigma: float,
    generation: int,
    best_fitness: float | None,
    track_best: bool = True,
) -> Generation:
    """Evaluate one generation through a trainer's flat hooks; nothing is written to the parameters.

    Frozen parameters (``requires_grad=False``) get zero perturbation and no update. The update is checked
    finite before it is returned.

    Returns:
        ``(scores, finite, best, grads)``: the ``(N,)`` float64 scores and their finite mask;
        ``(fitness, values)`` of the best member if it beats ``best_fitness`` (and ``track_best``), else
        ``None``; per parameter −ĝ (a fresh tensor: the ascent direction negated) or ``None`` when frozen.
    """
    n = population_size
    theta = parameters_to_vector([p.detach() for p in params])
    perturbations = sample_perturbations(n)
    if perturbations.shape != (n, theta.numel()):
        raise ValueError(
            f"sample_perturbations must return shape {(n, theta.numel())}, got {tuple(perturbations.shape)}"
        )
    frozen = [not p.requires_grad for p in params]
    if any(frozen):  # frozen parameters are neither perturbed nor updated
        keep = torch.cat(
            [torch.full((p.numel(),), float(not f), device=p.device) for p, f in zip(params, frozen)]
        )
        perturbations = perturbations * keep.to(perturbations)
    scores = torch.empty(n, dtype=torch.float64)
    try:
        for i in range(n):
            vector_to_parameters(theta + sigma * perturbations[i].to(theta), params)
            scores[i] = score()
    finally:
        vector_to_parameters(theta, params)
    finite = check_scores(scores, generation)
    clean = clean_scores(scores)
    member = best_member(scores, best_fitness) if track_best else None
    best = None
    if member is not None:
        values = split(theta + sigma * perturbations[member].to(theta), params)
        best = float(scores[member]), [t.view_as(p).clone() for t, p in zip(values, params)]
    update = compute_update(perturbations, clean.to(device=theta.device, dtype=torch.float32))
    check_finite([update], generation)
    grads: list[Tensor | None] = [  # −ĝ: what the torch.optim rule minimises along
        None if f else u.view_as(p).neg().to(p.dtype)  # neg: a fresh tensor, never a view of ``update``
        for u, p, f in zip(split(update, params), params, frozen)
    ]
    return scores, finite, best, grads


class FlatVectorHooks:
    """eggroll-trainer 0.1.0's flat-vector API, mixed into [`ESTrainer`][eggroll_trainer.ESTrainer]: the two
    hooks a custom algorithm overrides and the ``device`` they read. The defaults reproduce the trainer's
    keyed-noise ES from what it holds (``_generation_noise``, ``_all_params``, ``antithetic``, ``_shaping``,
    ``group_size``, ``param_groups``); a subclass that overrides either hook trains through
    ``flat_generation``."""

    @property
    def device(self) -> torch.device:
        """The trained parameters' device, where 0.1.0's hooks put their perturbations."""
        return self._all_params()[0].device

    def sample_perturbations(self, population_size: int) -> Tensor:
        """Flat-vector hook (eggroll-trainer 0.1.0 API): ``(N, D)`` unit perturbations.

        Override it (and/or [`compute_update`][eggroll_trainer.ESTrainer.compute_update]) to write a custom
        ES on flat vectors: member i is then evaluated at ``current_params + σ · perturbations[i]`` and
        ``compute_update`` returns the ascent direction added as ``lr · update``. The default materialises
        the keyed noise of this generation (O(N·D): for inspection, not for training).
        """
        noises = self._generation_noise(self.generation)
        return dense_perturbations(self._all_params(), noises, population_size, self.antithetic)

    def compute_update(self, perturbations: Tensor, fitnesses: Tensor) -> Tensor:
        """Flat-vector hook: ``(N, D), (N,) -> (D,)`` ascent direction.

        ``fitnesses`` are the raw scores (higher is better; non-finite ones already replaced by a value below
        every finite score). Default: the ES estimate ``Σᵢ f̃ᵢ εᵢ / (N σ)`` with this
        trainer's fitness shaping.
        """
        return es_update(
            perturbations, fitnesses, self._shaping, self.group_size, self.param_groups[0]["sigma"]
        )

    def _uses_flat_hooks(self) -> bool:
        cls = type(self)
        return (
            cls.sample_perturbations is not FlatVectorHooks.sample_perturbations
            or cls.compute_update is not FlatVectorHooks.compute_update
        )
