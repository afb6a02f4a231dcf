"""What a tuning run writes: checkpoints it resumes from, ``metrics.jsonl``, the learning curve.

A checkpoint is a folder holding ``state.pt``: the trainer's ``state_dict()`` (generation, seed, update-rule
moments) and the trained matrices by module name. The prompt order and the sampling noise are functions of
the seed and the generation, so nothing else is needed to continue bit-identically. It is written to a
temporary folder and renamed, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["save_checkpoint", "load_checkpoint", "read_metrics", "plot_learning_curve"]


def save_checkpoint(
    directory: str | Path, trainer: Any, names: Sequence[str], params: Sequence[Tensor]
) -> Path:
    """Write ``directory/state.pt`` (trainer state and the trained tensors ``{name: tensor}``), atomically."""
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    weights = {name: p.detach().to("cpu", copy=True) for name, p in zip(names, params)}
    torch.save({"trainer": trainer.state_dict(), "weights": weights}, partial / "state.pt")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return directory


def load_checkpoint(
    directory: str | Path, trainer: Any, names: Sequence[str], params: Sequence[Tensor]
) -> int:
    """Restore a [`save_checkpoint`][eggroll_trainer.llm.checkpoint.save_checkpoint] folder into ``trainer``
    and ``params``; returns the generation it holds.

    Raises:
        ValueError: no checkpoint there, or it holds other matrices than ``names``.
    """
    path = Path(directory) / "state.pt"
    if not path.is_file():
        raise ValueError(f"Invalid resume: no checkpoint in {directory} (expected {path.name})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if list(state["weights"]) != list(names):
        raise ValueError(
            f"Invalid resume: {directory} holds {len(state['weights'])} other matrices than the "
            f"{len(names)} this run trains (same --target-modules?)"
        )
    trainer.load_state_dict(state["trainer"])
    with torch.no_grad():
        for p, name in zip(params, names):
            p.copy_(state["weights"][name])
    return int(state["trainer"]["es"]["generation"])


def read_metrics(path: str | Path, upto: int) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` up to generation ``upto``, and the file cut back to them (a run
    interrupted after its last checkpoint logged generations the resumed run will log again)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in records if r.get("generation", 0) <= upto]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def plot_learning_curve(metrics: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """A PNG of the mean reward per generation (and the held-out reward where evaluated); ``None`` with a
    warning when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("no learning curve: matplotlib is not installed", stacklevel=2)
        return None
    train = [(m["generation"], m["mean_reward"]) for m in metrics if "mean_reward" in m]
    held = [(m["generation"], m["eval_reward"]) for m in metrics if "eval_reward" in m]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="population mean reward")
    if held:
        ax.plot(*zip(*held), "o-", label="held-out reward (greedy)")
    ax.set_xlabel("generation")
    ax.set_ylabel("reward")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
