"""Population mode: one forward evaluates K members at once.

Inside :class:`population_mode` the user's model takes inputs with a leading population dimension
``(K, ...)`` and returns member i's output at index i. Nothing about the model object changes outside
the context; inside, hooks do the work:

* **Fast path — ``nn.Linear``** (exact class forward): a forward hook adds the members' perturbation to
  the shared base GEMM ``y = x Wᵀ + b`` computed by the layer itself::

      y_i += σ s_i (x_i B_k) A_kᵀ / √r + σ s_i β_k          (k = pair of member i, s_i = ±1)

  With antithetic pairs both mirrors share one ``bmm`` over pairs; the rank-r correction is added in
  place by ``baddbmm_``. Extra work per member is O(rows·r·(m + n)); nothing of size K·m·n exists.
* **Generic path — any other module that owns parameters** (LayerNorm, Embedding, Conv, MultiheadAttention,
  custom modules, ...): its forward is run under ``torch.func.vmap`` over per-member parameter stacks via
  ``torch.func.functional_call``. This materialises K copies of *that module's* parameters, so keep big
  matrices in ``nn.Linear`` layers. The module's forward must be vmap-compatible (no in-place updates of
  buffers, e.g. BatchNorm in training mode).

Fitness functions can ask :func:`current_population` how many members the current forward holds (it is
smaller than the population when the trainer evaluates in chunks).
"""

from __future__ import annotations

import math
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .noise import ParamNoise, member_pairs


@dataclass(frozen=True)
class PopulationInfo:
    """The members one population-mode call evaluates: ``start .. start+size-1`` of ``total``."""

    size: int
    start: int
    total: int


_local = threading.local()


def current_population() -> PopulationInfo | None:
    """The members being evaluated right now, or ``None`` outside a population-mode evaluation.

    A batched fitness function uses it to shape shared data: ``x.expand(info.size, *x.shape)``."""
    stack = getattr(_local, "populations", [])
    return stack[-1] if stack else None


@contextmanager
def _announce(info: PopulationInfo) -> Iterator[None]:
    stack = _local.__dict__.setdefault("populations", [])
    stack.append(info)
    try:
        yield
    finally:
        stack.pop()


@contextmanager
def _suspended() -> Iterator[None]:
    """Inside a vmapped generic module: its children's hooks must not perturb a second time."""
    _local.suspended = getattr(_local, "suspended", 0) + 1
    try:
        yield
    finally:
        _local.suspended -= 1


def _is_suspended() -> bool:
    return getattr(_local, "suspended", 0) > 0


@dataclass
class Perturbed:
    """One perturbed parameter: its noise for this generation and its group's σ."""

    noise: ParamNoise
    sigma: float


def _is_fast_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def plan_units(model: nn.Module, perturbed_ids: set[int]) -> tuple[list[nn.Module], list[nn.Module]]:
    """Split the modules that own perturbed parameters into fast ``nn.Linear`` units and generic units.

    Walk top-down; a Linear is a fast unit; any other module with parameters of its own (and perturbed
    parameters below it) is a generic unit taken whole; otherwise descend into the children."""
    fast: list[nn.Module] = []
    generic: list[nn.Module] = []
    seen: set[int] = set()

    def owns_perturbed(mod: nn.Module) -> bool:
        return any(id(p) in perturbed_ids for p in mod.parameters())

    def visit(mod: nn.Module) -> None:
        if id(mod) in seen or not owns_perturbed(mod):
            return
        seen.add(id(mod))
        if _is_fast_linear(mod):
            fast.append(mod)
        elif any(True for _ in mod.parameters(recurse=False)):
            generic.append(mod)
        else:
            for child in mod.children():
                visit(child)

    visit(model)
    return fast, generic


class population_mode:
    """Context manager: ``model`` evaluates members ``start .. start+count-1`` of the population.

    Args:
        model: the user's module (unchanged after exit).
        perturbed: ``{id(param): Perturbed}`` for every perturbed parameter of the model.
        start, count, total: the member slice and the population size.
        antithetic: whether members 2k and 2k+1 mirror pair k.
    """

    def __init__(
        self,
        model: nn.Module,
        perturbed: dict[int, Perturbed],
        start: int,
        count: int,
        total: int,
        antithetic: bool,
    ) -> None:
        self.model = model
        self.perturbed = perturbed
        self.info = PopulationInfo(size=count, start=start, total=total)
        self.antithetic = antithetic
        self.fast, self.generic = plan_units(model, set(perturbed))
        covered = {id(p) for unit in self.fast + self.generic for p in unit.parameters()}
        missing = [pid for pid in perturbed if pid not in covered]
        if missing:
            raise ValueError(
                f"batched evaluation: {len(missing)} trained parameter(s) are not parameters of `model`"
            )
        device = next(iter(perturbed.values())).noise.table.device if perturbed else torch.device("cpu")
        self.pairs, self.signs = member_pairs(start, count, antithetic, device)
        # Both mirrors of every pair in this slice, in order: one bmm per pair serves both.
        self.paired = antithetic and start % 2 == 0 and count % 2 == 0
        self.calls: dict[int, int] = {}
        self._handles: list[Any] = []
        self._overridden: list[nn.Module] = []
        self._announce = _announce(self.info)

    # ----------------------------------------------------------------------------------- context
    def __enter__(self) -> population_mode:
        try:
            for module in self.fast:
                self._handles.append(module.register_forward_hook(self._linear_hook))
            for module in self.generic:
                if "forward" in module.__dict__:
                    raise ValueError(f"batched evaluation: {type(module).__name__} has a patched forward")
                module.forward = self._generic_forward(module)  # instance attribute; removed on exit
                self._overridden.append(module)
            self._announce.__enter__()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._announce.__exit__(None, None, None)
        self._restore()

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._overridden:
            module.__dict__.pop("forward", None)
        self._overridden.clear()

    def warn_unused(self) -> None:
        """Warn about units whose forward never ran: their perturbation could not reach the fitness."""
        unused = [type(m).__name__ for m in self.fast + self.generic if self.calls.get(id(m), 0) == 0]
        if unused:
            warnings.warn(
                "batched evaluation: the forward of "
                + ", ".join(unused)
                + " never ran, so its perturbation did not reach the fitness (is its weight used "
                "directly by a parent module?); use sequential evaluation for such models",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------------------ fast path
    def _check_leading(self, module: nn.Module, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[0] != self.info.size:
            raise ValueError(
                f"population mode: {type(module).__name__} got input of shape {tuple(x.shape)}; inputs need "
                f"a leading population dimension of {self.info.size} (use x.expand({self.info.size}, *x.shape))"
            )

    def _linear_hook(self, module: nn.Linear, args: tuple[Any, ...], out: Tensor) -> Tensor | None:
        if _is_suspended():
            return None
        x = args[0]
        self._check_leading(module, x)
        self.calls[id(module)] = self.calls.get(id(module), 0) + 1
        weight = self.perturbed.get(id(module.weight))
        bias = self.perturbed.get(id(module.bias)) if module.bias is not None else None
        k, m = self.info.size, module.out_features
        rows = out.numel() // (k * m)
        if self.paired:
            y = self._paired_linear(x, out, weight, bias, rows)
        else:
            y = self._general_linear(x, out, weight, bias, rows)
        return y.view(out.shape)

    def _paired_linear(
        self, x: Tensor, out: Tensor, weight: Perturbed | None, bias: Perturbed | None, rows: int
    ) -> Tensor:
        p, first = self.info.size // 2, self.info.start // 2
        m, n = out.shape[-1], x.shape[-1]
        y = out.reshape(p, 2 * rows, m)  # (P, 2·rows, m): both mirrors of pair k in one block
        if weight is not None and weight.noise.spec.low_rank:
            a, b = weight.noise.factors(first, p)  # (P, m, r), (P, n, r) — views of the table
            xb = torch.bmm(x.reshape(p, 2 * rows, n), b)  # (P, 2·rows, r)
            xb.view(p, 2, rows, -1)[:, 1].neg_()  # mirror members take -E
            alpha = weight.sigma / math.sqrt(weight.noise.spec.rank)
            y.baddbmm_(xb, a.transpose(1, 2), alpha=alpha)
        elif weight is not None:  # full-rank weight noise (VanillaESTrainer): y_i += σ s_i x_i ε_kᵀ
            xs = x.reshape(p, 2, rows, n).clone()
            xs[:, 1].neg_()
            eps = weight.noise.full(first, p)  # (P, m, n) — a view, never a copy
            y.baddbmm_(xs.view(p, 2 * rows, n), eps.transpose(1, 2), alpha=weight.sigma)
        if bias is not None:
            beta = bias.noise.full(first, p).unsqueeze(1)  # (P, 1, m)
            y4 = y.view(p, 2, rows, m)
            y4[:, 0].add_(beta, alpha=bias.sigma)
            y4[:, 1].sub_(beta, alpha=bias.sigma)
        return y

    def _general_linear(
        self, x: Tensor, out: Tensor, weight: Perturbed | None, bias: Perturbed | None, rows: int
    ) -> Tensor:
        k = self.info.size
        m, n = out.shape[-1], x.shape[-1]
        pairs, signs = self.pairs, self.signs.to(out.dtype)
        last = int(pairs.max()) + 1
        y = out.reshape(k, rows, m)
        if weight is not None and weight.noise.spec.low_rank:
            a, b = self._rows(weight.noise.factors(0, last))  # (K, m, r), (K, n, r)
            xb = torch.bmm(x.reshape(k, rows, n), b) * signs.view(k, 1, 1)  # (K, rows, r)
            alpha = weight.sigma / math.sqrt(weight.noise.spec.rank)
            y.baddbmm_(xb, a.transpose(1, 2), alpha=alpha)
        elif weight is not None:  # full-rank weight noise
            (eps,) = self._rows((weight.noise.full(0, last),))  # (K, m, n)
            xs = x.reshape(k, rows, n) * signs.view(k, 1, 1)
            y.baddbmm_(xs, eps.transpose(1, 2), alpha=weight.sigma)
        if bias is not None:
            (beta,) = self._rows((bias.noise.full(0, last),))
            beta = beta * signs.view(k, 1)  # (K, m)
            y.add_(beta.unsqueeze(1), alpha=bias.sigma)
        return y

    def _rows(self, views: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Each member's row of per-pair noise views: a view when pairs are consecutive (no antithetic
        sampling), an indexed copy for an irregular antithetic slice (odd size or odd start)."""
        if not self.antithetic:
            start, k = self.info.start, self.info.size
            return tuple(v[start : start + k] for v in views)
        return tuple(v[self.pairs] for v in views)

    # --------------------------------------------------------------------------- generic path
    def _member_params(self, module: nn.Module) -> dict[str, Tensor]:
        """``{name: (K, *shape)}``: θ + σ s_i E_i for each perturbed parameter of ``module``."""
        stacked = {}
        for name, param in module.named_parameters():
            entry = self.perturbed.get(id(param))
            if entry is not None:
                noise = entry.noise.dense(self.pairs, self.signs)  # (K, *shape)
                stacked[name] = torch.add(param.unsqueeze(0), noise, alpha=entry.sigma)
        return stacked

    def _generic_forward(self, module: nn.Module) -> Any:
        class_forward = type(module).forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if _is_suspended():  # the vmapped call below re-enters here
                return class_forward(module, *args, **kwargs)
            for arg in args:
                if isinstance(arg, Tensor):
                    self._check_leading(module, arg)
            self.calls[id(module)] = self.calls.get(id(module), 0) + 1
            stacked = self._member_params(module)
            in_dims = (0, *(0 if isinstance(a, Tensor) else None for a in args))

            def one_member(params: dict[str, Tensor], *member_args: Any) -> Any:
                return torch.func.functional_call(module, params, member_args, kwargs, strict=False)

            with _suspended():
                return torch.func.vmap(one_member, in_dims=in_dims, randomness="different")(
                    stacked, *args
                )

        return forward
