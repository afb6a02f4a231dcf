"""`ESOptimizer`: what every ES trainer shares whatever its algorithm, as ``torch/optim/optimizer.py`` holds
what SGD and Adam share.

That is the run's lasting state — the generation counter, the fitness history, the best member, the noise seed —
and what reads or writes it: ``state_dict``/``load_state_dict`` (a reload continues bit-identically), ``reset``,
the ``train`` loop, ``get_best_model``, and the group-wide ``lr``/``sigma`` accessors.
[`ESTrainer`][eggroll_trainer.ESTrainer] adds the hyperparameters, the noise and ``step``.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .. import distributed
from ..updates.master import MasterWeights
from ..updates.rules import build_rules, check_rule, describe_rule, restored_rules
from ..validation import check, check_groups, check_params, is_int, is_real
from .best import best_model, restored
from .checkpoint import check_settings, run_settings
from .evaluation import FitnessFn, evaluate_center
from .loop import generation_metrics, run_generations

logger = logging.getLogger("eggroll_trainer.trainers.base")  # the name users configure


class ESOptimizer(torch.optim.Optimizer):
    """Base of [`ESTrainer`][eggroll_trainer.ESTrainer]: the lasting state of an ES run and its checkpoint.

    A subclass implements ``step()`` (one generation, ending with ``_record``) and sets ``noise_table_size``
    before its first ``state_dict()``. Every group needs ``lr``, ``sigma`` and ``optimizer`` (the update
    rule, built here on the groups: see ``eggroll_trainer.updates.rules``).

    Args:
        params: parameters or param-group dicts.
        defaults: the groups' default hyperparameters.
        model: the module whose parameters are trained.
        fitness_fn: ``fitness_fn(model)``, or ``None``.
        population_size: members per generation N.
        batched: whether ``fitness_fn`` scores a population at once.
        seed: noise seed; ``None`` draws one from ``secrets`` (rank 0's on every rank when distributed).
        track_best: keep the best member (one copy of the trained parameters); ``False``: nothing kept.
        master_weights: keep an fp32 master copy of every bf16/fp16 parameter, stepped by the update rule
            (``eggroll_trainer.updates.master``); ``False`` steps them in their own precision.

    Memory: besides the update rule's moments, the trainer holds at most two copies of the trained parameters,
    both optional — the best member (``track_best``, on the parameters' device) and θ₀ for
    [`reset`][eggroll_trainer.ESTrainer.reset], copied to the **CPU** only when the first ``step`` is about to
    move the parameters (a trainer that is never stepped copies nothing) — and, for 16-bit parameters, their
    fp32 masters (``master_weights``, on the parameters' device). ``trainer_memory()`` reports them.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        model: nn.Module,
        fitness_fn: FitnessFn | None,
        population_size: int,
        batched: bool,
        seed: int | None,
        track_best: bool = True,
        master_weights: bool = True,
    ) -> None:
        super().__init__(params, defaults)
        check_groups(self.param_groups)
        for group in self.param_groups:
            check_rule(group["optimizer"])
        self.model = model
        self.fitness_fn = fitness_fn
        self.population_size = int(population_size)
        self.batched = bool(batched)
        check_params(self._all_params())
        self.seed = distributed.broadcast_seed(seed if seed is not None else secrets.randbits(63))
        self.noise_table_size = 0  # set by the subclass, which knows its noise
        self.generation = 0
        self.fitness_history: list[float] = []
        self.best_fitness: float | None = None
        self.track_best = bool(track_best)
        self._best_params: list[Tensor] | None = None
        self._initial_params: list[Tensor] | None = None  # θ₀ on the CPU, copied before the first update
        self._masters = MasterWeights(master_weights)  # fp32 copies of 16-bit parameters, made when stepped
        self._rules = build_rules(self.param_groups, self.state)  # torch.optim optimizers on our groups

    # ------------------------------------------------------------------------------ properties
    @property
    def learning_rate(self) -> float:
        """``lr`` of the first param group (set: every group)."""
        return self.param_groups[0]["lr"]

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        check(is_real(value) and value >= 0, f"Invalid learning rate: {value}")
        for group in self.param_groups:
            group["lr"] = value

    @property
    def sigma(self) -> float:
        """``sigma`` of the first param group (set: every group)."""
        return self.param_groups[0]["sigma"]

    @sigma.setter
    def sigma(self, value: float) -> None:
        check(is_real(value) and value > 0, f"Invalid sigma: {value}")
        for group in self.param_groups:
            group["sigma"] = value

    @property
    def current_params(self) -> Tensor:
        """The trained parameters as one flat vector (a copy)."""
        return parameters_to_vector([p.detach() for p in self._all_params()])

    @current_params.setter
    def current_params(self, flat: Tensor) -> None:
        with torch.no_grad():
            vector_to_parameters(flat, self._all_params())

    # ---------------------------------------------------------------------------------- public
    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``torch.optim.Optimizer.zero_grad``. ES never reads ``.grad``: the update rule sees ``−ĝ`` there
        only inside ``step()``, which puts every ``.grad`` back as it found it."""
        super().zero_grad(set_to_none=set_to_none)

    def train(self, num_generations: int, verbose: bool = True) -> dict[str, Any]:
        """Run ``num_generations`` generations (a tqdm bar when ``verbose``).

        Ctrl-C stops after restoring the last completed generation's weights and returns normally
        (``interrupted`` is then ``True``).

        Returns:
            ``generation``, ``best_fitness``, ``fitness_history``, ``interrupted``.
        """
        check(is_int(num_generations) and num_generations >= 0, f"Invalid num_generations: {num_generations}")
        interrupted = run_generations(self.step, num_generations, verbose)
        if interrupted:
            logger.warning("interrupted; parameters are those after generation %d", self.generation)
        return {
            "generation": self.generation,
            "best_fitness": self.best_fitness,
            "fitness_history": self.fitness_history,
            "interrupted": interrupted,
        }

    def evaluate_fitness(self, model: nn.Module) -> float:
        """``fitness_fn(model)`` as a float — the unperturbed model's fitness.

        With ``batched=True`` the fitness function is called in a population of one member (inputs with a
        leading dimension of 1), so the same function serves both."""
        if self.fitness_fn is None:
            raise ValueError("evaluate_fitness() needs a fitness_fn")
        return evaluate_center(model, self.fitness_fn, self.batched)

    def get_best_model(self) -> nn.Module:
        """A deep copy of ``model`` holding exactly the best evaluated member's parameters.

        Raises:
            ValueError: the trainer was built with ``track_best=False``.
        """
        if not self.track_best:
            raise ValueError("get_best_model(): best-member tracking is off (built with track_best=False)")
        return best_model(self.model, self._all_params(), self._best_params)

    def trainer_memory(self) -> dict[str, int]:
        """Bytes the trainer itself holds beyond the model: ``best_member`` (the best member's values),
        ``initial_params`` (θ₀ for ``reset``, on the CPU), ``rule_state`` (the update rule's moments) and
        ``master_params`` (the fp32 masters of 16-bit parameters)."""

        def size(tensors: Iterable[Any] | None) -> int:
            return sum(t.numel() * t.element_size() for t in tensors or () if isinstance(t, Tensor))

        moments = [v for s in self.state.values() for v in s.values()]
        return {
            "best_member": size(self._best_params),
            "initial_params": size(self._initial_params),
            "rule_state": size(moments),
            "master_params": self._masters.nbytes(),
        }

    def reset(self) -> None:
        """Back to the parameters and state at construction (generation 0, no history or moments)."""
        if self._initial_params is not None:
            with torch.no_grad():
                for p, value in zip(self._all_params(), self._initial_params):
                    p.copy_(value)
        self._initial_params = None
        self._masters.reset()
        self.state = defaultdict(dict)
        self._rules = build_rules(self.param_groups, self.state)
        self.generation = 0
        self.fitness_history = []
        self.best_fitness = None
        self._best_params = None

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state plus the ES state (generation, seed, history, best member, table size) and the
        settings a resume depends on (``trainers.checkpoint``)."""
        state = super().state_dict()
        state["es"] = {
            "generation": self.generation,
            "seed": self.seed,
            "population_size": self.population_size,
            "noise_table_size": self.noise_table_size,
            "fitness_history": list(self.fitness_history),
            "best_fitness": self.best_fitness,
            "best_params": None if self._best_params is None else [t.clone() for t in self._best_params],
            "master_params": self._masters.state(),
            **run_settings(
                self
            ),  # rank, antithetic, noise_reuse, group_size, elite_k, shaping: checked on load
        }
        for packed in state["param_groups"]:  # a callable rule is saved by name (loads with weights_only)
            packed["optimizer"] = describe_rule(packed["optimizer"])
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a [`state_dict`][eggroll_trainer.ESTrainer.state_dict]; the run then continues bit-identically
        (the saved seed wins). Raises ``ValueError`` naming the setting if the trainer was built with another
        population size, rank, antithetic, noise_reuse, group_size, elite_k or shaping than the checkpoint."""
        es = state_dict.get("es")
        if es is None:
            raise ValueError("load_state_dict: not an ESTrainer state dict (no 'es' entry)")
        if es["population_size"] != self.population_size:
            raise ValueError(
                f"load_state_dict: saved population_size={es['population_size']} != {self.population_size}"
            )
        check_settings(es, run_settings(self))
        rules = restored_rules(
            state_dict["param_groups"], self.param_groups
        )  # raises before anything changes
        params = self._all_params()
        self._masters.load(es.get("master_params"), params)
        with self._masters.swapped(params):  # moments are cast to the masters' fp32, not to bf16
            super().load_state_dict({k: v for k, v in state_dict.items() if k != "es"})
        for group, rule in zip(self.param_groups, rules):
            group["optimizer"] = rule
        self._rules = build_rules(self.param_groups, self.state)
        self.generation = int(es["generation"])
        self.seed = int(es["seed"])
        self.noise_table_size = int(es["noise_table_size"])
        self.fitness_history = list(es["fitness_history"])
        self.best_fitness = es["best_fitness"]
        self._best_params = restored(es["best_params"], self._all_params())

    # -------------------------------------------------------------------------------- internals
    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _keep_initial_params(self) -> None:
        """Copy θ₀ to the CPU before the first update moves it (once; ``reset`` reads it)."""
        if self._initial_params is None:
            self._initial_params = [p.detach().to("cpu", copy=True) for p in self._all_params()]

    def _record(self, finite_scores: np.ndarray, with_closure: bool) -> dict[str, Any]:
        """Count a completed generation; its metrics over this generation's finite scores (n,)."""
        self.generation += 1
        metrics = generation_metrics(self.generation, finite_scores, with_closure)
        self.fitness_history.append(metrics["mean_fitness"])
        return metrics
