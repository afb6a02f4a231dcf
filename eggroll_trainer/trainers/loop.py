"""The run loop around ``step``: ``train``'s generations (a progress bar when asked, Ctrl-C as a normal stop)
and the metrics each generation reports."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import distributed


def run_generations(step: Callable[[], dict[str, Any]], num_generations: int, verbose: bool) -> bool:
    """Call ``step()`` ``num_generations`` times, with a tqdm bar (on rank 0 only) when ``verbose``.

    Returns:
        Whether Ctrl-C stopped the run (``step`` defers it until a generation is written completely).
    """
    show = verbose and distributed.world()[0] == 0  # one bar, not one per process
    bar = tqdm(range(num_generations), disable=not show, desc="generations")
    try:
        for _ in bar:
            metrics = step()
            bar.set_postfix(mean=f"{metrics['mean_fitness']:.4g}", best=f"{metrics['best_fitness']:.4g}")
    except KeyboardInterrupt:
        return True
    finally:
        bar.close()
    return False


def generation_metrics(generation: int, finite_scores: np.ndarray, with_closure: bool) -> dict[str, Any]:
    """What ``step`` returns: ``generation``, and the ``mean_fitness``, ``best_fitness`` and (population)
    ``std_fitness`` of the generation's finite scores (n,) — and ``loss``, the mean loss, with a closure.
    (numpy: a few µs, where each torch reduction of a small CPU vector costs ~10.)"""
    mean = float(finite_scores.mean())
    centered = finite_scores - mean
    metrics: dict[str, Any] = {
        "generation": generation,
        "mean_fitness": mean,
        "best_fitness": float(finite_scores.max()),
        "std_fitness": math.sqrt(float(centered @ centered) / centered.size),
    }
    if with_closure:
        metrics["loss"] = -mean
    return metrics
