"""`ESTrainer`: Evolution Strategies as a ``torch.optim.Optimizer``.

Read as ``torch/optim/sgd.py``: hyperparameters validated, kept in ``param_groups``; the subclass hooks; ``step``.
The lasting state and checkpoint are ``state.ESOptimizer``'s; a generation is computed by ``generation``
(keyed noise) or by ``compat`` (eggroll-trainer 0.1.0's flat-vector hooks, ``FlatVectorHooks``), then written
all at once by the update rule (``updates.rules``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..noise.params import NoiseSpec, ParamNoise, num_pairs
from ..noise.perturbations import generation_noise, table_size, with_padding_rows
from ..shaping import ShapingFn, resolve_shaping
from ..updates.rules import Rule, rule_defaults, step_rules
from ..validation import check, check_arguments, resolve_lr
from .compat import FlatVectorHooks, flat_generation
from .evaluation import FitnessFn, scorer
from .generation import GenerationSettings, keyed_generation
from .interrupts import defer_keyboard_interrupt
from .state import ESOptimizer

__all__ = ["ESTrainer", "FitnessFn"]


class ESTrainer(FlatVectorHooks, ESOptimizer):
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
            ([`ClipUp`][eggroll_trainer.updates.rules.ClipUp]), or any ``torch.optim.Optimizer`` class or
            ``functools.partial`` of one (``functools.partial(torch.optim.SGD, momentum=0.9)``). It is stepped
            with ``.grad = −ĝ`` on this trainer's own param groups (see ``eggroll_trainer.updates.rules``);
            bf16/fp16 parameters are stepped through fp32 master copies (``master_weights``).
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
        track_best: keep the best member evaluated so far for
            [`get_best_model`][eggroll_trainer.ESTrainer.get_best_model] (default, as in 0.1.0): one extra
            copy of the trained parameters. ``False`` keeps nothing and costs nothing (language models, where
            "the best member" over changing prompt batches means little).
        master_weights: keep an fp32 master copy of every bf16/fp16 trained parameter (default): the rule
            steps the master and the parameter holds its rounded value, so updates smaller than half a
            16-bit ulp accumulate instead of vanishing (``eggroll_trainer.updates.master``). Costs 4 bytes per
            16-bit parameter; ``False`` steps them in their own precision.
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
        track_best: bool = True,
        master_weights: bool = True,
    ) -> None:
        lr = resolve_lr(learning_rate, lr)
        check_arguments(
            model=model, fitness_fn=fitness_fn, population_size=population_size, lr=lr, sigma=sigma, seed=seed,
            group_size=group_size, noise_reuse=noise_reuse, chunk_size=chunk_size, batch_dim=batch_dim,
            noise_table_size=noise_table_size, elite_k=elite_k, antithetic=antithetic,
        )  # fmt: skip
        rule_options = rule_defaults(
            optimizer, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
            betas=betas, eps=eps, max_speed=max_speed,
        )  # fmt: skip
        shaping = resolve_shaping(fitness_shaping)
        if device is not None:
            model.to(device)

        defaults = dict(lr=lr, sigma=sigma, optimizer=optimizer, **rule_options)
        super().__init__(
            params, defaults, model=model, fitness_fn=fitness_fn, population_size=population_size,
            batched=batched, seed=seed, track_best=track_best, master_weights=master_weights,
        )  # fmt: skip
        self.antithetic = bool(antithetic)
        self.fitness_shaping = fitness_shaping
        self._shaping = shaping
        self.group_size = int(group_size)
        self.elite_k = int(elite_k)
        self.noise_reuse = int(noise_reuse)
        self.chunk_size = chunk_size
        self.batch_dim = batch_dim
        params_list = self._all_params()
        if self._uses_flat_hooks():
            check(
                not batched,
                "Invalid batched: flat-vector subclasses (sample_perturbations) evaluate sequentially",
            )
            self._specs: list[NoiseSpec | None] = [None for _ in params_list]
        else:
            self._specs = [with_padding_rows(self._noise_spec(p), p, model) for p in params_list]
        self.noise_table_size = table_size(self._specs, noise_table_size, self._pairs)

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

    # ------------------------------------------------------------------------------------- step
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
        params = self._all_params()
        if self._uses_flat_hooks():
            scores, finite, best, grads = flat_generation(
                params, self.sample_perturbations, self.compute_update, scorer(self.model, self.fitness_fn, closure),
                population_size=self.population_size, sigma=self.param_groups[0]["sigma"],
                generation=self.generation, best_fitness=self.best_fitness, track_best=self.track_best,
            )  # fmt: skip
        else:
            scores, finite, best, grads = keyed_generation(
                self._settings(), params, self._sigmas(), self._generation_noise(self.generation),
                generation=self.generation, best_fitness=self.best_fitness, closure=closure,
            )  # fmt: skip
        with defer_keyboard_interrupt():  # parameters, moments, best member, counters: all or nothing
            self._keep_initial_params()
            with self._masters.stepping(params, grads) as grads:  # 16-bit parameters: fp32 masters stepped
                step_rules(self._rules, params, grads)
            if best is not None:
                self.best_fitness, self._best_params = best
            return self._record(scores.numpy()[finite.numpy()], closure is not None)

    # -------------------------------------------------------------------------------- internals
    @property
    def _pairs(self) -> int:
        return num_pairs(self.population_size, self.antithetic)

    def _sigmas(self) -> list[float]:
        return [group["sigma"] for group in self.param_groups for _ in group["params"]]

    def _settings(self) -> GenerationSettings:
        """This generation's settings, as ``generation.keyed_generation`` reads them."""
        return GenerationSettings(
            model=self.model, fitness_fn=self.fitness_fn, population_size=self.population_size,
            antithetic=self.antithetic, shaping=self._shaping, group_size=self.group_size, elite_k=self.elite_k,
            batched=self.batched, chunk_size=self.chunk_size, batch_dim=self.batch_dim, seed=self.seed,
            track_best=self.track_best,
        )  # fmt: skip

    def _generation_noise(self, generation: int) -> list[ParamNoise | None]:
        """Per parameter: its noise for the epoch of ``generation`` (None = not perturbed)."""
        return generation_noise(
            self._all_params(), self._specs, seed=self.seed, table_size=self.noise_table_size,
            generation=generation, noise_reuse=self.noise_reuse, pairs=self._pairs,
        )  # fmt: skip
