"""Reinforcement learning with ES: a population plays its episodes in lockstep.

* ``lockstep`` — many gymnasium environments stepped together, in this process and in worker processes;
* ``episodes`` — a population's episodes in those environments, and the bare-stepping reference;
* ``population_rollout`` — ``PopulationRollout``, the fitness of a generation (the unperturbed policy's
  returns, played in the same lockstep);
* ``normalisation`` — the observation normaliser shared by the population, and a policy as plain layers;
* ``selection`` — which policy of a run to keep: the best few, re-evaluated on fresh episodes;
* ``presets`` — per-task hyperparameters of ``examples/mujoco_agent.py``; ``render`` — a GIF of an episode.
"""

from .episodes import Episodes, bare_steps_per_s, rollout
from .lockstep import LockstepEnvs, MakeEnv
from .normalisation import RunningMeanStd, deployable_policy
from .population_rollout import Generation, PopulationRollout
from .selection import BestPolicies, select_best

__all__ = [
    "LockstepEnvs",
    "MakeEnv",
    "bare_steps_per_s",
    "RunningMeanStd",
    "deployable_policy",
    "Episodes",
    "rollout",
    "Generation",
    "PopulationRollout",
    "BestPolicies",
    "select_best",
]
