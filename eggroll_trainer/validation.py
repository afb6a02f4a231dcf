"""Argument checks of the trainers, run before anything is built (as ``torch.optim`` does before
``super().__init__``): bad input raises ``ValueError`` naming the argument, ``f"Invalid sigma: {sigma}"``.

The update-rule keywords (``momentum``, ``betas``, …) are checked by ``updates.rules.rule_defaults``, the fitness
shaping by ``shaping.resolve_shaping``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn


def check(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def is_int(x: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_real(x: Any) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def resolve_lr(learning_rate: float, lr: float | None) -> float:
    """The step size from ``learning_rate`` and its alias ``lr``: ``lr`` wins when the other is left at its
    default 0.01; two different values are an error."""
    if lr is not None and learning_rate not in (0.01, lr):
        raise ValueError(f"Invalid lr: {lr} conflicts with learning_rate={learning_rate}; pass one")
    return learning_rate if lr is None else lr


def check_arguments(
    *,
    model: Any,
    fitness_fn: Callable[..., Any] | None,
    population_size: Any,
    lr: Any,
    sigma: Any,
    seed: Any,
    group_size: Any,
    noise_reuse: Any,
    chunk_size: Any,
    batch_dim: Any,
    noise_table_size: Any,
    elite_k: Any,
    antithetic: bool,
) -> None:
    """The trainer's own hyperparameters (see [`ESTrainer`][eggroll_trainer.ESTrainer] for their meaning)."""
    check(isinstance(model, nn.Module), f"Invalid model: expected an nn.Module, got {type(model).__name__}")
    check(fitness_fn is None or callable(fitness_fn), f"Invalid fitness_fn: {fitness_fn!r} is not callable")
    check(is_int(population_size) and population_size >= 1, f"Invalid population_size: {population_size}")
    check(is_real(lr) and lr >= 0, f"Invalid learning rate: {lr}")
    check(is_real(sigma) and sigma > 0, f"Invalid sigma: {sigma}")
    check(seed is None or is_int(seed), f"Invalid seed: {seed!r}")
    check(is_int(group_size) and group_size >= 0, f"Invalid group_size: {group_size}")
    check(
        group_size == 0 or population_size % group_size == 0,
        f"Invalid group_size: {group_size} does not divide population_size={population_size}",
    )
    check(is_int(noise_reuse) and noise_reuse >= 0, f"Invalid noise_reuse: {noise_reuse}")
    check(chunk_size is None or (is_int(chunk_size) and chunk_size >= 1), f"Invalid chunk_size: {chunk_size}")
    check(batch_dim in (0, 1), f"Invalid batch_dim: {batch_dim!r} (0: batch-first, 1: sequence-first)")
    check(
        noise_table_size is None or (is_int(noise_table_size) and noise_table_size >= 2),
        f"Invalid noise_table_size: {noise_table_size}",
    )
    check(
        is_int(elite_k) and 0 <= elite_k <= population_size // 2 and (elite_k == 0 or antithetic),
        f"Invalid elite_k: {elite_k} (0: off; else 1 ≤ elite_k ≤ N/2 pairs, with antithetic=True)",
    )
    check(elite_k == 0 or population_size % 2 == 0, f"Invalid elite_k: {elite_k} needs an even N")


def check_groups(param_groups: list[dict[str, Any]]) -> None:
    """Per-group settings, which may differ from the defaults: σ > 0, lr ≥ 0 (each group's update rule is
    checked by ``updates.rules.check_rule``)."""
    for group in param_groups:
        check(group["sigma"] > 0, f"Invalid sigma: {group['sigma']}")
        check(group["lr"] >= 0, f"Invalid learning rate: {group['lr']}")


def check_params(params: list[Tensor]) -> None:
    """At least one parameter, and not all of them frozen (``requires_grad=False``)."""
    check(len(params) > 0, "Invalid params: the trainer got no parameters")
    check(
        any(p.requires_grad for p in params),
        "Invalid params: every parameter has requires_grad=False, and frozen parameters are not trained",
    )
