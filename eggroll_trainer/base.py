"""`ESTrainer`: Evolution Strategies as a ``torch.optim.Optimizer``."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import secrets
import signal
import threading
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

from . import distributed
from .noise import NoiseSpec, ParamNoise, default_table_size, hash_key, member_pairs, noise_table, num_pairs
from .population import Perturbed, PopulationInfo, _announce, population_mode
from .shaping import ShapingFn, finite_or_worst, resolve_shaping, shape_fitness
from .update_rules import (
    Rule,
    build_rules,
    check_rule,
    describe_rule,
    restored_rules,
    rule_defaults,
    step_rules,
)

logger = logging.getLogger(__name__)

FitnessFn = Callable[[nn.Module], Any]

#: Table values one chunk of the update GEMM may touch (A and B factors of c pairs): 16 M floats.
_UPDATE_CHUNK_VALUES = 1 << 24


class ESTrainer(torch.optim.Optimizer):
    r"""Evolution Strategies as a PyTorch optimizer.

    Each generation (one [`step`][eggroll_trainer.ESTrainer.step]) evaluates `N = population_size` members
    $\theta + \sigma s_i E_{k(i)}$ and moves $\theta$ along the ES gradient estimate

    $$\hat g = \frac{1}{N\sigma} \sum_{i=1}^{N} \tilde f_i \, s_i E_{k(i)},$$

    where $\tilde f$ are the shaped fitnesses (higher is better), $s_i = \pm 1$ the antithetic sign and
    $E_k$ the keyed noise of pair $k$ (full-rank Gaussian here; low rank in
    [`EGGROLLTrainer`][eggroll_trainer.EGGROLLTrainer]). $\hat g$ is an *ascent* direction: plain SGD does
    $\theta \leftarrow \theta + \mathrm{lr}\cdot\hat g$; with Adam/AdamW, $-\hat g$ plays the role of the
    gradient.

    Parameters with ``requires_grad=False`` are frozen, as ``torch.optim`` optimizers skip them: neither
    perturbed nor updated (checked at every generation, so freezing mid-run works).

    Used directly (or through [`VanillaESTrainer`][eggroll_trainer.VanillaESTrainer]) every parameter gets
    full-rank noise. Subclasses that override
    [`sample_perturbations`][eggroll_trainer.ESTrainer.sample_perturbations] /
    [`compute_update`][eggroll_trainer.ESTrainer.compute_update] work on flat vectors instead, as in
    eggroll-trainer 0.1.0.

    Args:
        params: parameters to train (usually ``model.parameters()``) or param-group dicts.
        model: the module whose parameters are trained; handed to ``fitness_fn``.
        fitness_fn: ``fitness_fn(model) -> float`` (higher is better); with ``batched=True`` it returns
            a tensor of one score per member. May be ``None`` when every step gets a closure.
        population_size: members per generation N.
        learning_rate: step size (stored as ``param_groups[i]["lr"]``).
        sigma: noise scale σ (stored as ``param_groups[i]["sigma"]``).
        device: if given, the model is moved there; otherwise the parameters' device is used.
        seed: noise seed; ``None`` draws one (from ``secrets``, never from torch's global RNG).
        lr: alias of ``learning_rate``.
        antithetic: members 2k and 2k+1 share noise with signs +1/-1.
        fitness_shaping: ``"zscore"``, ``"centered_rank"``, ``"raw"`` or a callable ``(N,) -> (N,)``.
        group_size: if > 0, subtract the mean of each block of G consecutive members and divide by the
            global std (must divide N).
        elite_k: if > 0, only the ``elite_k`` antithetic pairs whose best member ranks highest contribute,
            rescaled by the std of their 2·elite_k weights (ARS' top-b directions; see
            [`elite_pairs`][eggroll_trainer.elite_pairs]). Applied after ``fitness_shaping`` and
            ``group_size``; needs ``antithetic=True`` and an even N. 0: every pair (default).
        noise_reuse: k ≥ 2 keeps the same noise for k consecutive generations; 0 or 1: fresh noise each
            generation. (eggroll-trainer 0.1.0 used this flag for antithetic sampling: see ``antithetic``.)
        optimizer: the rule that applies ĝ: ``"sgd"`` (default; ``torch.optim.SGD``), ``"adam"``,
            ``"adamw"`` (``torch.optim.Adam``/``AdamW``), ``"clipup"``
            ([`ClipUp`][eggroll_trainer.update_rules.ClipUp]), or any ``torch.optim.Optimizer`` class or
            ``functools.partial`` of one (``functools.partial(torch.optim.SGD, momentum=0.9)``). It is stepped
            with ``.grad = −ĝ`` on this trainer's own param groups (see ``eggroll_trainer.update_rules``).
        momentum: SGD momentum factor; ClipUp's velocity decay (named rules: default 0).
        dampening: SGD dampening for momentum (default 0).
        nesterov: SGD Nesterov momentum (default False).
        weight_decay: L2 penalty, decoupled for ``"adamw"`` (default 0).
        betas: Adam/AdamW coefficients of the running averages (default (0.9, 0.999)).
        eps: Adam/AdamW term added to the denominator (default 1e-8).
        max_speed: ClipUp's velocity bound (default ``2 * lr``).

            With a named rule, ``None`` (the signature's default) means the default given here. With an
            optimizer class, the keywords left ``None`` take that class's own defaults, and those set must
            be parameters of it.
        batched: evaluate the population in population mode (one forward for all members; see
            [`current_population`][eggroll_trainer.current_population]); ``fitness_fn`` then returns one
            score per member.
        chunk_size: with ``batched=True``, members per population-mode call (bounded memory).
        batch_dim: with ``batched=True``, the dimension of activations that holds the K·b rows (0 for
            batch-first models and Hugging Face; 1 for sequence-first ones, ``batch_first=False``).
        noise_table_size: values in the shared noise table (default: sized from the model, ≤ 2^25).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        model: nn.Module,
        fitness_fn: FitnessFn | None,
        population_size: int = 50,
        learning_rate: float = 0.01,
        sigma: float = 0.1,
        device: torch.device | str | None = None,
        seed: int | None = None,
        *,
        lr: float | None = None,
        antithetic: bool = True,
        fitness_shaping: str | ShapingFn = "zscore",
        group_size: int = 0,
        elite_k: int = 0,
        noise_reuse: int = 0,
        optimizer: Rule = "sgd",
        momentum: float | None = None,
        dampening: float | None = None,
        nesterov: bool | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        max_speed: float | None = None,
        batched: bool = False,
        chunk_size: int | None = None,
        batch_dim: int = 0,
        noise_table_size: int | None = None,
    ) -> None:
        if lr is not None and learning_rate not in (0.01, lr):
            raise ValueError(f"Invalid lr: {lr} conflicts with learning_rate={learning_rate}; pass one")
        lr = learning_rate if lr is None else lr
        _check(isinstance(model, nn.Module), f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        _check(fitness_fn is None or callable(fitness_fn), f"Invalid fitness_fn: {fitness_fn!r} is not callable")
        _check(_is_int(population_size) and population_size >= 1, f"Invalid population_size: {population_size}")
        _check(_is_real(lr) and lr >= 0, f"Invalid learning rate: {lr}")
        _check(_is_real(sigma) and sigma > 0, f"Invalid sigma: {sigma}")
        _check(seed is None or _is_int(seed), f"Invalid seed: {seed!r}")
        _check(_is_int(group_size) and group_size >= 0, f"Invalid group_size: {group_size}")
        _check(
            group_size == 0 or population_size % group_size == 0,
            f"Invalid group_size: {group_size} does not divide population_size={population_size}",
        )
        _check(_is_int(noise_reuse) and noise_reuse >= 0, f"Invalid noise_reuse: {noise_reuse}")
        rule_options = rule_defaults(
            optimizer, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
            betas=betas, eps=eps, max_speed=max_speed,
        )  # fmt: skip
        _check(chunk_size is None or (_is_int(chunk_size) and chunk_size >= 1), f"Invalid chunk_size: {chunk_size}")
        _check(batch_dim in (0, 1), f"Invalid batch_dim: {batch_dim!r} (0: batch-first, 1: sequence-first)")
        _check(
            noise_table_size is None or (_is_int(noise_table_size) and noise_table_size >= 2),
            f"Invalid noise_table_size: {noise_table_size}",
        )
        _check(
            _is_int(elite_k) and 0 <= elite_k <= population_size // 2 and (elite_k == 0 or antithetic),
            f"Invalid elite_k: {elite_k} (0: off; else 1 ≤ elite_k ≤ N/2 pairs, with antithetic=True)",
        )
        _check(elite_k == 0 or population_size % 2 == 0, f"Invalid elite_k: {elite_k} needs an even N")
        shaping = resolve_shaping(fitness_shaping)

        defaults = dict(lr=lr, sigma=sigma, optimizer=optimizer, **rule_options)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check(group["sigma"] > 0, f"Invalid sigma: {group['sigma']}")
            _check(group["lr"] >= 0, f"Invalid learning rate: {group['lr']}")
            check_rule(group["optimizer"])

        if device is not None:
            model.to(device)
        self.model = model
        self.fitness_fn = fitness_fn
        self.population_size = int(population_size)
        self.antithetic = bool(antithetic)
        self.fitness_shaping = fitness_shaping
        self._shaping = shaping
        self.group_size = int(group_size)
        self.elite_k = int(elite_k)
        self.noise_reuse = int(noise_reuse)
        self.batched = bool(batched)
        self.chunk_size = chunk_size
        self.batch_dim = batch_dim
        params_list = self._all_params()
        _check(len(params_list) > 0, "Invalid params: the trainer got no parameters")
        _check(
            any(p.requires_grad for p in params_list),
            "Invalid params: every parameter has requires_grad=False, and frozen parameters are not trained",
        )
        self.device = torch.device(device) if device is not None else params_list[0].device
        self.seed = distributed.broadcast_seed(seed if seed is not None else secrets.randbits(63))

        if self._uses_flat_hooks():
            _check(not batched, "Invalid batched: flat-vector subclasses (sample_perturbations) evaluate sequentially")
            self._specs: list[NoiseSpec | None] = [None for _ in params_list]
        else:
            self._specs = [_with_padding_rows(self._noise_spec(p), p, model) for p in params_list]
        lengths = [s.length for s in self._specs if s is not None]
        pairs = num_pairs(self.population_size, self.antithetic)
        self.noise_table_size = noise_table_size or default_table_size(lengths, pairs)
        for spec in self._specs:
            if spec is not None and self.noise_table_size < spec.length + pairs - 1:
                raise ValueError(
                    f"Invalid noise_table_size: {self.noise_table_size} < {spec.length + pairs - 1} "
                    f"needed by a parameter of shape {tuple(spec.shape)}"
                )

        self.generation = 0
        self.fitness_history: list[float] = []
        self.best_fitness: float | None = None
        self._best_params: list[Tensor] | None = None
        self._initial_params = [p.detach().clone() for p in params_list]
        self._rules = build_rules(self.param_groups, self.state)  # torch.optim optimizers on our groups

    # --------------------------------------------------------------------------- subclass hooks
    def _noise_spec(self, param: Tensor) -> NoiseSpec | None:
        """Subclass hook: how ``param`` is perturbed. Called once per parameter tensor, at construction.

        Returns:
            ``NoiseSpec(param.shape, rank=r)`` for low-rank noise ``A Bᵀ/√r`` (2-D tensors only),
            ``NoiseSpec(param.shape, rank=None)`` for full-rank Gaussian noise (the default here), or ``None``
            to freeze the tensor: neither perturbed nor updated. ``NoiseSpec`` is
            ``eggroll_trainer.noise.NoiseSpec``.
        """
        return NoiseSpec(param.shape, rank=None)

    def sample_perturbations(self, population_size: int) -> Tensor:
        """Flat-vector hook (eggroll-trainer 0.1.0 API): ``(N, D)`` unit perturbations.

        Override it (and/or [`compute_update`][eggroll_trainer.ESTrainer.compute_update]) to write a custom
        ES on flat vectors: member i is then evaluated at ``current_params + σ · perturbations[i]`` and
        ``compute_update`` returns the ascent direction added as ``lr · update``. The default materialises
        the keyed noise of this generation (O(N·D): for inspection, not for training).
        """
        noises = self._generation_noise(self.generation)
        pairs, signs = member_pairs(0, population_size, self.antithetic, torch.device("cpu"))
        rows = []
        for pair, sign in zip(pairs.tolist(), signs.tolist()):
            parts = []
            for p, noise in zip(self._all_params(), noises):
                if noise is None:
                    parts.append(torch.zeros(p.numel(), device=p.device, dtype=p.dtype))
                else:
                    parts.append(noise.dense(torch.tensor([pair]), torch.tensor([sign]))[0].reshape(-1))
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    def compute_update(self, perturbations: Tensor, fitnesses: Tensor) -> Tensor:
        """Flat-vector hook: ``(N, D), (N,) -> (D,)`` ascent direction.

        ``fitnesses`` are the raw scores (higher is better; non-finite ones already replaced by a value below
        every finite score). Default: the ES estimate ``Σᵢ f̃ᵢ εᵢ / (N σ)`` with this
        trainer's fitness shaping.
        """
        shaped = shape_fitness(fitnesses.double().cpu(), self._shaping, self.group_size)
        shaped = shaped.to(device=perturbations.device, dtype=perturbations.dtype)
        return shaped @ perturbations / (perturbations.shape[0] * self.param_groups[0]["sigma"])

    # ------------------------------------------------------------------------------ properties
    @property
    def learning_rate(self) -> float:
        """``lr`` of the first param group (set: every group)."""
        return self.param_groups[0]["lr"]

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        _check(_is_real(value) and value >= 0, f"Invalid learning rate: {value}")
        for group in self.param_groups:
            group["lr"] = value

    @property
    def sigma(self) -> float:
        """``sigma`` of the first param group (set: every group)."""
        return self.param_groups[0]["sigma"]

    @sigma.setter
    def sigma(self, value: float) -> None:
        _check(_is_real(value) and value > 0, f"Invalid sigma: {value}")
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
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> dict[str, Any]:  # type: ignore[override]
        """Run one generation: evaluate the population, update θ. Returns the generation's metrics.

        Without a closure members are scored by ``fitness_fn(model)`` (higher is better). With a closure
        (``opt.step(closure)``) the closure returns a **loss** (lower is better) and is called once per
        member with the parameters set to that member — or, with ``batched=True``, once per population-mode
        call, returning one loss per member. The closure runs with autograd enabled (as for ``LBFGS``);
        ES needs no ``backward()``, so leave it out where you can.

        Returns:
            ``generation`` (completed generations), ``mean_fitness``, ``best_fitness``, ``std_fitness``
            over this generation's finite scores (and ``loss``, the mean loss, with a closure).
        """
        if closure is None and self.fitness_fn is None:
            raise ValueError("step() needs a closure when the trainer was built with fitness_fn=None")
        if closure is not None:
            closure = torch.enable_grad()(closure)
        if self._uses_flat_hooks():
            return self._flat_step(closure)
        noises = self._generation_noise(self.generation)
        scores = self._evaluate(noises, closure)  # (N,) float64, higher is better
        finite = self._check_finite(scores)
        best = self._best_candidate(scores, noises)  # built from θ before it moves
        shaped = shape_fitness(scores, self._shaping, self.group_size, self.elite_k)
        pairs, signs = member_pairs(0, self.population_size, self.antithetic, torch.device("cpu"))
        # Σ_i f̃_i s_i E_k(i) = Σ_k w_k E_k with w_k = Σ_{i in pair k} s_i f̃_i
        pair_weights = torch.zeros(num_pairs(self.population_size, self.antithetic), dtype=torch.float64)
        pair_weights.index_add_(0, pairs, signs.double() * shaped)
        with _defer_keyboard_interrupt():
            self._apply(noises, pair_weights)
            if best is not None:
                self.best_fitness, self._best_params = best
            return self._finish(scores[finite], closure is not None)

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
        _check(_is_int(num_generations) and num_generations >= 0, f"Invalid num_generations: {num_generations}")
        interrupted = False
        show = verbose and distributed.world()[0] == 0  # one bar, not one per process
        bar = tqdm(range(num_generations), disable=not show, desc="generations")
        try:
            for _ in bar:
                metrics = self.step()
                bar.set_postfix(mean=f"{metrics['mean_fitness']:.4g}", best=f"{metrics['best_fitness']:.4g}")
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted; parameters are those after generation %d", self.generation)
        finally:
            bar.close()
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
        with torch.no_grad():
            if self.batched:
                with _announce(PopulationInfo(size=1, start=0, total=1)):
                    return _scalar(self.fitness_fn(model), "fitness_fn")
            return _scalar(self.fitness_fn(model), "fitness_fn")

    def get_best_model(self) -> nn.Module:
        """A deep copy of ``model`` holding exactly the best evaluated member's parameters."""
        best = copy.deepcopy(self.model)
        if self._best_params is None:
            return best
        names = {id(p): name for name, p in self.model.named_parameters(remove_duplicate=False)}
        with torch.no_grad():
            for p, value in zip(self._all_params(), self._best_params):
                if id(p) not in names:
                    raise ValueError("get_best_model(): a trained parameter is not a parameter of `model`")
                best.get_parameter(names[id(p)]).copy_(value)
        return best

    def reset(self) -> None:
        """Back to the parameters and state at construction (generation 0, no history or moments)."""
        with torch.no_grad():
            for p, value in zip(self._all_params(), self._initial_params):
                p.copy_(value)
        self.state = defaultdict(dict)
        self._rules = build_rules(self.param_groups, self.state)
        self.generation = 0
        self.fitness_history = []
        self.best_fitness = None
        self._best_params = None

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state plus the ES state (generation, seed, history, best member, table size)."""
        state = super().state_dict()
        state["es"] = {
            "generation": self.generation,
            "seed": self.seed,
            "population_size": self.population_size,
            "noise_table_size": self.noise_table_size,
            "fitness_history": list(self.fitness_history),
            "best_fitness": self.best_fitness,
            "best_params": None if self._best_params is None else [t.clone() for t in self._best_params],
        }
        for packed in state["param_groups"]:  # a callable rule is saved by name (loads with weights_only)
            packed["optimizer"] = describe_rule(packed["optimizer"])
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a [`state_dict`][eggroll_trainer.ESTrainer.state_dict]; the run then continues bit-identically
        (the saved seed wins)."""
        es = state_dict.get("es")
        if es is None:
            raise ValueError("load_state_dict: not an ESTrainer state dict (no 'es' entry)")
        if es["population_size"] != self.population_size:
            raise ValueError(
                f"load_state_dict: saved population_size={es['population_size']} != {self.population_size}"
            )
        rules = restored_rules(state_dict["param_groups"], self.param_groups)  # raises before anything changes
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "es"})
        for group, rule in zip(self.param_groups, rules):
            group["optimizer"] = rule
        self._rules = build_rules(self.param_groups, self.state)
        self.generation = int(es["generation"])
        self.seed = int(es["seed"])
        self.noise_table_size = int(es["noise_table_size"])
        self.fitness_history = list(es["fitness_history"])
        self.best_fitness = es["best_fitness"]
        params = self._all_params()
        self._best_params = (
            None
            if es["best_params"] is None
            else [t.to(device=p.device, dtype=p.dtype).clone() for t, p in zip(es["best_params"], params)]
        )

    # -------------------------------------------------------------------------------- internals
    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _uses_flat_hooks(self) -> bool:
        cls = type(self)
        return (
            cls.sample_perturbations is not ESTrainer.sample_perturbations
            or cls.compute_update is not ESTrainer.compute_update
        )

    def _generation_noise(self, generation: int) -> list[ParamNoise | None]:
        """Per parameter: its noise for the epoch of ``generation`` (None = frozen)."""
        epoch = generation // self.noise_reuse if self.noise_reuse >= 2 else generation
        pairs = num_pairs(self.population_size, self.antithetic)
        noises: list[ParamNoise | None] = []
        for index, (p, spec) in enumerate(zip(self._all_params(), self._specs)):
            if spec is None or not p.requires_grad:  # frozen, as torch.optim skips parameters without grad
                noises.append(None)
                continue
            table = noise_table(self.seed, self.noise_table_size, p.device, p.dtype)
            noises.append(ParamNoise(table, spec, hash_key(self.seed, index, epoch), pairs))
        return noises

    def _sigmas(self) -> list[float]:
        return [group["sigma"] for group in self.param_groups for _ in group["params"]]

    def _evaluate(self, noises: list[ParamNoise | None], closure: Callable[[], Any] | None) -> Tensor:
        """Scores of the whole population, (N,) float64 on CPU; this rank evaluates its shard."""
        evaluate = self._evaluate_batched if self.batched else self._evaluate_sequential
        return distributed.evaluate_sharded(
            self.population_size,
            lambda start, count: evaluate(noises, start, count, closure),
            seed=self.seed,
            generation=self.generation,
        )

    def _score(self, closure: Callable[[], Any] | None) -> float:
        if closure is not None:
            return -_scalar(closure(), "closure")
        assert self.fitness_fn is not None
        return _scalar(self.fitness_fn(self.model), "fitness_fn")

    def _evaluate_sequential(
        self, noises: list[ParamNoise | None], start: int, count: int, closure: Callable[[], Any] | None
    ) -> Tensor:
        """Write θ + σ s_i E_i into the live parameters, score, restore θ exactly from a saved copy."""
        live = [(p, n, s) for p, n, s in zip(self._all_params(), noises, self._sigmas()) if n is not None]
        saved = [p.detach().clone() for p, _, _ in live]
        pairs, signs = member_pairs(start, count, self.antithetic, torch.device("cpu"))
        scores = torch.empty(count, dtype=torch.float64)
        try:
            for t, (pair, sign) in enumerate(zip(pairs.tolist(), signs.tolist())):
                for p, noise, sigma in live:
                    noise.perturb_(p, pair, sign * sigma)
                scores[t] = self._score(closure)
                for (p, _, _), theta in zip(live, saved):
                    p.copy_(theta)
        finally:
            for (p, _, _), theta in zip(live, saved):
                p.copy_(theta)
        return scores

    def _evaluate_batched(
        self, noises: list[ParamNoise | None], start: int, count: int, closure: Callable[[], Any] | None
    ) -> Tensor:
        """Population mode: one call of the fitness function (or closure) per chunk of members."""
        perturbed = {
            id(p): Perturbed(n, s) for p, n, s in zip(self._all_params(), noises, self._sigmas()) if n is not None
        }
        chunk = self.chunk_size or count
        parts = []
        for first in range(start, start + count, chunk):
            size = min(chunk, start + count - first)
            with population_mode(
                self.model, perturbed, first, size, self.population_size, self.antithetic, self.batch_dim
            ) as pm:
                out = closure() if closure is not None else self.fitness_fn(self.model)  # type: ignore[misc]
            if first == start:
                pm.warn_unused()
            values = torch.as_tensor(out.detach() if isinstance(out, Tensor) else out, dtype=torch.float64)
            values = values.cpu().reshape(-1) if values.dim() <= 1 else values
            if values.shape != (size,):
                what = "closure" if closure is not None else "fitness_fn"
                raise ValueError(
                    f"batched {what} must return {size} values (one per member), got shape {tuple(values.shape)}"
                )
            parts.append(-values if closure is not None else values)
        return torch.cat(parts)

    def _check_finite(self, scores: Tensor) -> Tensor:
        finite = torch.isfinite(scores)
        bad = int((~finite).sum())
        if bad == scores.numel():
            raise RuntimeError(
                f"generation {self.generation}: no member returned a finite fitness; parameters unchanged"
            )
        if bad:
            warnings.warn(
                f"generation {self.generation}: {bad} of {scores.numel()} fitness values are NaN/inf; "
                "they are ranked worst",
                RuntimeWarning,
                stacklevel=3,
            )
        return finite

    def _best_candidate(
        self, scores: Tensor, noises: list[ParamNoise | None]
    ) -> tuple[float, list[Tensor]] | None:
        """This generation's best member if it beats the best so far, rebuilt from its key exactly as
        sequential evaluation builds it (θ + σ s E, same ops, same order)."""
        clean, _ = finite_or_worst(scores)
        member = int(torch.argmax(clean))
        value = float(scores[member])
        if not math.isfinite(value) or (self.best_fitness is not None and value <= self.best_fitness):
            return None
        pairs, signs = member_pairs(member, 1, self.antithetic, torch.device("cpu"))
        best = []
        for p, noise, sigma in zip(self._all_params(), noises, self._sigmas()):
            value_p = p.detach().clone()
            if noise is not None:
                noise.perturb_(value_p, int(pairs[0]), float(signs[0]) * sigma)
            best.append(value_p)
        return value, best

    def _apply(self, noises: list[ParamNoise | None], pair_weights: Tensor) -> None:
        """ĝ_j = Σ_k w_k E_k / (N σ) for every perturbed parameter, then the group's update rule.

        All estimates are computed and checked before any parameter moves: all or nothing."""
        params = self._all_params()
        ascents: list[Tensor | None] = []
        for p, noise, sigma in zip(params, noises, self._sigmas()):
            if noise is None:
                ascents.append(None)
                continue
            chunk = max(1, _UPDATE_CHUNK_VALUES // noise.spec.length)
            if self.chunk_size:
                chunk = min(chunk, max(1, math.ceil(self.chunk_size / 2)))
            w = pair_weights.to(device=p.device, dtype=p.dtype)
            ascents.append(noise.weighted_sum(w, chunk).div_(self.population_size * sigma))
        _check_finite_update([g for g in ascents if g is not None], self.generation)
        step_rules(self._rules, params, ascents)

    def _finish(self, finite_scores: Tensor, with_closure: bool) -> dict[str, Any]:
        self.generation += 1
        mean = float(finite_scores.mean())
        self.fitness_history.append(mean)
        metrics: dict[str, Any] = {
            "generation": self.generation,
            "mean_fitness": mean,
            "best_fitness": float(finite_scores.max()),
            "std_fitness": float(finite_scores.std(unbiased=False)) if finite_scores.numel() > 1 else 0.0,
        }
        if with_closure:
            metrics["loss"] = -mean
        return metrics

    def _flat_step(self, closure: Callable[[], Any] | None) -> dict[str, Any]:
        """eggroll-trainer 0.1.0's flat-vector protocol, without its bugs (θ restored per member)."""
        params = self._all_params()
        theta = self.current_params
        perturbations = self.sample_perturbations(self.population_size)
        if perturbations.shape != (self.population_size, theta.numel()):
            raise ValueError(
                f"sample_perturbations must return shape {(self.population_size, theta.numel())}, "
                f"got {tuple(perturbations.shape)}"
            )
        frozen = [not p.requires_grad for p in params]
        if any(frozen):  # frozen parameters are neither perturbed nor updated
            keep = torch.cat([torch.full((p.numel(),), float(not f)) for p, f in zip(params, frozen)])
            perturbations = perturbations * keep.to(perturbations)
        sigma = self.param_groups[0]["sigma"]
        scores = torch.empty(self.population_size, dtype=torch.float64)
        try:
            for i in range(self.population_size):
                vector_to_parameters(theta + sigma * perturbations[i].to(theta), params)
                scores[i] = self._score(closure)
        finally:
            vector_to_parameters(theta, params)
        finite = self._check_finite(scores)
        clean, _ = finite_or_worst(scores)
        member = int(torch.argmax(clean))
        if self.best_fitness is None or float(scores[member]) > self.best_fitness:
            self.best_fitness = float(scores[member])
            flat = theta + sigma * perturbations[member].to(theta)
            self._best_params = [t.view_as(p).clone() for t, p in zip(_split(flat, params), params)]
        update = self.compute_update(perturbations, clean.to(device=theta.device, dtype=torch.float32))
        _check_finite_update([update], self.generation)
        ascents: list[Tensor | None] = [
            None if f else u.view_as(p).to(p.dtype, copy=True)
            for u, p, f in zip(_split(update, params), params, frozen)
        ]
        with _defer_keyboard_interrupt():
            step_rules(self._rules, params, ascents)
            return self._finish(scores[finite], closure is not None)


# ------------------------------------------------------------------------------------ helpers
def _with_padding_rows(spec: NoiseSpec | None, param: Tensor, model: nn.Module) -> NoiseSpec | None:
    """An ``nn.Embedding``'s ``padding_idx`` row is never perturbed nor updated (as autograd never updates it)."""
    if spec is None:
        return None
    rows = {
        m.padding_idx % param.shape[0]
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.weight is param and m.padding_idx is not None
    }
    return dataclasses.replace(spec, zero_rows=tuple(sorted(rows))) if rows else spec


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _scalar(value: Any, what: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must return a single number, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().reshape(()).item())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must return a number, got {type(value).__name__}") from None


def _check_finite_update(grads: list[Tensor], generation: int) -> None:
    if not all(_all_finite(g) for g in grads):
        raise RuntimeError(f"generation {generation}: the ES estimate is not finite; parameters unchanged")


def _all_finite(t: Tensor) -> bool:
    # min and max are finite iff every value is (NaN propagates): one pass, no temporaries — isfinite().all()
    # costs ~25x more on CPU, a fifth of a whole generation for a 1M-parameter MLP (benchmarks/).
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return math.isfinite(lo.item()) and math.isfinite(hi.item())


def _split(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    out, index = [], 0
    for p in params:
        out.append(flat[index : index + p.numel()])
        index += p.numel()
    return out


@contextmanager
def _defer_keyboard_interrupt() -> Iterator[None]:
    """Hold Ctrl-C while parameters and moments are being written, so an update is all or nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    except ValueError:  # signals unavailable here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])
