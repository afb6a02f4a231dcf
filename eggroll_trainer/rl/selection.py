"""Which policy of a run to keep: the best few by their generation's evaluation, re-evaluated at the end.

A generation's evaluation of θ ([`Generation.center_return`][eggroll_trainer.rl.Generation], the median of a
few episodes) is noisy, and the best of many noisy scores is biased upwards. So the run keeps the ``keep``
best-scoring policies ([`BestPolicies`][eggroll_trainer.rl.BestPolicies]) and, at the end,
[`select_best`][eggroll_trainer.rl.select_best] plays every candidate (the last policy too) on the same fresh
episodes and keeps the one with the highest mean return. Report the winner on *other* fresh episodes: the
selection episodes favour it.

    best = BestPolicies(keep=3)
    for _ in range(100):
        trainer.step()
        gen = rollout.end_generation()
        best.offer(gen.center_return, f"generation {trainer.generation}", rollout.played_center)
    candidates = {**best.policies(), "last": rollout.deployable()}
    name, scores = select_best(candidates, lambda p: rollout.evaluate(5, seed=10_000, policy=p))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from torch import nn

__all__ = ["BestPolicies", "select_best"]


class BestPolicies:
    """The ``keep`` best policies offered so far, by score (on a tie the earlier one stays).

    Args:
        keep: how many to keep (at least 1).
    """

    def __init__(self, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"Invalid keep: {keep} (at least 1)")
        self.keep = keep
        self._kept: list[tuple[float, str, nn.Module]] = []  # best first

    def offer(self, score: float, name: str, build: Callable[[], nn.Module]) -> bool:
        """Keep the policy ``build()`` under ``name`` if ``score`` is among the ``keep`` best so far (a
        non-finite score never is); ``build`` is only called then. Returns whether it was kept."""
        if not math.isfinite(score):
            return False
        if len(self._kept) == self.keep and score <= self._kept[-1][0]:
            return False
        self._kept.append((float(score), name, build()))
        self._kept.sort(key=lambda kept: -kept[0])  # stable: an earlier equal score stays ahead
        del self._kept[self.keep :]
        return True

    def policies(self) -> dict[str, nn.Module]:
        """The kept policies by name, best score first."""
        return {name: policy for _, name, policy in self._kept}

    def scores(self) -> dict[str, float]:
        """The kept policies' scores by name, best first."""
        return {name: score for score, name, _ in self._kept}


def select_best(
    candidates: dict[str, nn.Module], evaluate: Callable[[nn.Module], np.ndarray]
) -> tuple[str, dict[str, np.ndarray]]:
    """The name of the candidate whose ``evaluate(policy)`` returns have the highest mean (on a tie the
    first), and every candidate's returns. Give ``evaluate`` the same fresh episodes for every candidate."""
    if not candidates:
        raise ValueError("select_best: no candidates")
    returns = {name: np.asarray(evaluate(policy), dtype=np.float64) for name, policy in candidates.items()}
    best = max(returns, key=lambda name: float(returns[name].mean()))
    return best, returns
