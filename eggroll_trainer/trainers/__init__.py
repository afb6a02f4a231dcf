"""The trainers, read top down: ``state`` (``ESOptimizer``: the run's lasting state and checkpoint) →
``base`` (``ESTrainer``: hyperparameters, hooks, ``step``) → ``eggroll`` / ``vanilla`` (the noise each gives).

A generation is computed by ``generation`` (keyed noise: ``evaluation`` scores the members, ``best`` keeps the
best one) or by ``compat`` (eggroll-trainer 0.1.0's flat-vector hooks), then applied under ``interrupts``'
deferred Ctrl-C.
"""

from .base import ESTrainer
from .eggroll import EGGROLLTrainer
from .state import ESOptimizer
from .vanilla import VanillaESTrainer

__all__ = ["ESOptimizer", "ESTrainer", "EGGROLLTrainer", "VanillaESTrainer"]
