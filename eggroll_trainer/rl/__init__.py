"""Reinforcement learning with ES: a population plays its episodes in lockstep.

* ``lockstep`` — many gymnasium environments stepped together, in this process and in worker processes;
* ``episodes`` — a population's episodes in those environments, and the bare-stepping reference;
* ``population_rollout`` — ``PopulationRollout``, the fitness of a generation (observation normalisation,
  the unperturbed policy's return);
* ``presets`` — per-task hyperparameters of ``examples/mujoco_agent.py``; ``render`` — a GIF of an episode.
"""

from .episodes import Episodes, bare_steps_per_s, rollout
from .lockstep import LockstepEnvs, MakeEnv
from .population_rollout import Generation, PopulationRollout, RunningMeanStd

__all__ = [
    "LockstepEnvs",
    "MakeEnv",
    "bare_steps_per_s",
    "RunningMeanStd",
    "Episodes",
    "rollout",
    "Generation",
    "PopulationRollout",
]
