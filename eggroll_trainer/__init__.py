"""eggroll-trainer: Evolution Strategies for PyTorch, built around EGGROLL (arXiv 2511.16652)."""

from .population import PopulationInfo, current_population
from .shaping import centered_rank, elite_pairs, group_normalize, raw, zscore
from .trainers.base import ESTrainer
from .trainers.eggroll import EGGROLLTrainer
from .trainers.vanilla import VanillaESTrainer

__all__ = [
    "ESTrainer",
    "VanillaESTrainer",
    "EGGROLLTrainer",
    "current_population",
    "PopulationInfo",
    "zscore",
    "centered_rank",
    "raw",
    "group_normalize",
    "elite_pairs",
]
__version__ = "0.2.0"
