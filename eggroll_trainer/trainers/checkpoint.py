"""The settings a checkpoint depends on, saved in ``state_dict()["es"]`` and checked on load.

A resumed run continues bit-identically only if it regenerates the same noise and shapes the scores the same
way: the noise rank, antithetic sampling, ``noise_reuse``, ``group_size``, ``elite_k`` and the fitness shaping.
Loading a checkpoint into a trainer built with other settings would silently continue a *different* run, so
[`check_settings`][eggroll_trainer.trainers.checkpoint.check_settings] refuses it, naming the setting.

A callable shaping is saved by its qualified name (``module.qualname``), so a checkpoint still loads with
``torch.load(weights_only=True)``; a built-in one by its name, whether given as a string or as the function.
Checkpoints written before these keys existed (eggroll-trainer at commit fb4a240) have none of them and load
unchecked, as they did then.
"""

from __future__ import annotations

from typing import Any

from ..shaping import SHAPINGS

#: The settings checked on load (``rank`` is ``None`` for full-rank noise).
SETTINGS = ("rank", "antithetic", "noise_reuse", "group_size", "elite_k", "fitness_shaping")


def shaping_name(shaping: Any) -> str:
    """A built-in shaping's name (given as the string or the function), else the callable's qualified name."""
    if isinstance(shaping, str):
        return shaping
    for name, fn in SHAPINGS.items():
        if shaping is fn:
            return name
    qualname = getattr(shaping, "__qualname__", None) or type(shaping).__qualname__
    return f"{getattr(shaping, '__module__', None) or type(shaping).__module__}.{qualname}"


def run_settings(trainer: Any) -> dict[str, Any]:
    """The trainer's values of ``SETTINGS`` (plain ints, bools, strings: ``weights_only``-loadable)."""
    reuse = int(getattr(trainer, "noise_reuse", 0))
    return {
        "rank": getattr(trainer, "rank", None),
        "antithetic": bool(getattr(trainer, "antithetic", True)),
        "noise_reuse": reuse if reuse >= 2 else 1,  # 0 and 1 both mean fresh noise every generation
        "group_size": int(getattr(trainer, "group_size", 0)),
        "elite_k": int(getattr(trainer, "elite_k", 0)),
        "fitness_shaping": shaping_name(getattr(trainer, "fitness_shaping", "zscore")),
    }


def check_settings(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first setting the checkpoint ``saved`` (its ``"es"`` entry) holds with
    another value than ``current``; a setting the checkpoint lacks (an older one) is not checked."""
    for name in SETTINGS:
        if name in saved and saved[name] != current[name]:
            raise ValueError(
                f"load_state_dict: the checkpoint was saved with {name}={saved[name]!r} but this trainer has "
                f"{name}={current[name]!r}; build the trainer with the checkpoint's settings to resume that run"
            )
