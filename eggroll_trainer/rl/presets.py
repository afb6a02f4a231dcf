r"""Hyperparameter presets of ``examples/mujoco_agent.py``, one per gymnasium MuJoCo task.

A [`Preset`][eggroll_trainer.rl.presets.Preset] holds what the example's ``EGGROLLTrainer`` and
``PopulationRollout`` need; ``time_budget`` is the wall budget of the task's goal (``docs/examples/mujoco.md``).
[`ars`][eggroll_trainer.rl.presets.ars] writes ARS' hyperparameters (Mania et al. 2018) as a preset: with
$N$ directions, $b$ kept, step $\alpha$ and noise $\nu$, ARS moves θ by
$\frac{\alpha}{b\,\sigma_R}\sum_{j \in \text{top } b}(r_j^+ - r_j^-)\,\delta_j$; the trainer's estimate with
``elite_k=b`` on raw returns is that sum divided by $2b\sigma_R\nu$ (``docs/guide/rl.md``), so plain SGD with
``lr = 2·ν·α`` takes exactly ARS' step.

    hp = preset_for("Hopper-v5", population_size=16)  # the task's preset, with overrides
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preset", "ars", "PRESETS", "preset_for"]


@dataclass(frozen=True)
class Preset:
    """One task's hyperparameters (the defaults: a linear policy, Adam on centered ranks)."""

    population_size: int = 32
    sigma: float = 0.03
    lr: float = 0.02
    rank: int = 1  # for a linear policy rank 1 learns as fast as full-rank noise (measured on HalfCheetah)
    optimizer: str = "adam"
    fitness_shaping: str = "centered_rank"
    elite_k: int = 0
    hidden: int = 0
    alive_bonus: float = 0.0
    normalize: bool = True
    time_budget: float = 600.0  # seconds: the wall budget of the task's goal (docs/examples/mujoco.md)
    env_kwargs: dict[str, Any] = field(default_factory=dict)


def ars(directions: int, top: int, alpha: float, nu: float, shift: float, **kw: Any) -> Preset:
    """ARS' hyperparameters (N directions, b kept, step α, noise ν, shift) as a preset: 2N members,
    ``elite_k=b``, σ=ν, raw returns and SGD with ``lr = 2να`` — exactly ARS' update."""
    return Preset(population_size=2 * directions, elite_k=top, sigma=nu, lr=2 * nu * alpha, optimizer="sgd",
                  fitness_shaping="raw", alive_bonus=shift, **kw)  # fmt: skip


PRESETS = {
    # ARS' own (V2-t: 32 directions, top 4, α = 0.02, ν = 0.03). 64 members step 65 envs in lockstep, so it
    # steps ~1.0x bare here, where Adam on centered ranks with N = 32 stepped 0.84-0.92x and learned slower.
    "HalfCheetah": ars(32, 4, 0.02, 0.03, 0.0, time_budget=120),
    # ARS' Hopper (8/4/0.01/0.025/1) with twice the directions, kept directions and step: as sample-efficient
    # and faster to step (more envs per lockstep step).
    "Hopper": ars(16, 8, 0.02, 0.025, 1.0),
    "Walker2d": ars(40, 30, 0.03, 0.025, 1.0, time_budget=900),  # ARS' own
    # ARS' own; the 78 contact-force entries of Ant's observation are almost always 0: left out.
    "Ant": ars(
        60, 20, 0.015, 0.025, 1.0, time_budget=900, env_kwargs={"include_cfrc_ext_in_observation": False}
    ),
    # Humanoid's healthy_reward is 5 per step: with Adam, subtracting all of it made falling at once the best policy.
    "Humanoid": Preset(alive_bonus=0.0, time_budget=3600),
    # ARS' Swimmer (1 direction, no normalisation) with 8 directions and 2x the step and noise.
    "Swimmer": ars(8, 4, 0.025, 0.02, 0.0, normalize=False, time_budget=300),
    "InvertedPendulum": Preset(time_budget=60),  # its reward is the alive bonus: never subtract it
}


def preset_for(env_id: str, **overrides: Any) -> Preset:
    """The preset of ``env_id``'s task (``"Hopper-v5"`` → ``PRESETS["Hopper"]``; an unknown task gets
    ``Preset()``), with every override that is not ``None`` applied. ``elite_k`` is capped at
    ``population_size // 2``, the number of antithetic pairs (a smaller ``population_size`` than the preset's).

    Raises:
        ValueError: an override that is not a field of ``Preset``.
    """
    names = {f.name for f in dataclasses.fields(Preset)}
    if unknown := sorted(set(overrides) - names):
        raise ValueError(
            f"Invalid preset override(s): {', '.join(unknown)} (fields: {', '.join(sorted(names))})"
        )
    preset = PRESETS.get(env_id.split("-v")[0], Preset())
    hp = dataclasses.replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(hp, elite_k=min(hp.elite_k, hp.population_size // 2))
