"""Population mode: one forward evaluates K members at once.

Inside :class:`population_mode` the user's model takes inputs with a leading population dimension
``(K, ...)`` and returns member i's output at index i. Nothing about the model object changes outside
the context; inside, hooks do the work:

* **Fast path — ``nn.Linear``** (exact class forward): a forward hook adds the members' perturbation to
  the shared base GEMM ``y = x Wᵀ + b`` computed by the layer itself::

      y_i += σ s_i (x_i B_k) A_kᵀ / √r + σ s_i β_k          (k = pair of member i, s_i = ±1)

  With antithetic pairs both mirrors share one ``bmm`` over pairs (``x B`` for both, one sign flip on
  the tiny result); the rank-r correction is added in place — ``addcmul_`` for r = 1, ``baddbmm_`` above.
  Factors are strided views of the noise table, taken once per context; a shared input
  (``x.expand(K, ...)``, stride 0) is never copied. Extra work per member is O(rows·r·(m + n)); nothing
  of size K·m·n exists.
* **Generic path — any other module that owns parameters** (LayerNorm, Embedding, Conv, MultiheadAttention,
  custom modules, ...): its forward is run under ``torch.func.vmap`` over per-member parameter stacks via
  ``torch.func.functional_call``. This materialises K copies of *that module's* parameters, so keep big
  matrices in ``nn.Linear`` layers. The module's forward must be vmap-compatible (no in-place updates of
  buffers, e.g. BatchNorm in training mode).

Fitness functions can ask :func:`current_population` how many members the current forward holds (it is
smaller than the population when the trainer evaluates in chunks).
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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


@dataclass
class _LinearNoise:
    """One fast ``nn.Linear``'s noise for the members of a population-mode call (see ``_plan_linear``)."""

    groups: int  # G
    mirrors: int  # S ∈ {1, 2}
    a_t: Tensor | None = None  # (G, r, m) Aᵀ (sign folded in when S = 1)
    b: Tensor | None = None  # (G, n, r) B, a transposed view of Bᵀ
    eps: Tensor | None = None  # (G, m, n) full-rank weight noise
    signs: Tensor | None = None  # (G,) signs for ``eps`` when S = 1 (None: all +1)
    alpha: float = 0.0  # σ/√r (low rank) or σ (full rank)
    beta: Tensor | None = None  # (G, 1, m) bias noise β_k (sign folded in when S = 1)
    sigma_b: float = 0.0


def _add_low_rank(y: Tensor, x: Tensor, plan: _LinearNoise, rows: int) -> None:
    """y (G, S, rows, m) += α s_i (x_i B_k) A_kᵀ for every member, in place; O(rows·r·(m + n)) each."""
    a_t, b = plan.a_t, plan.b
    assert a_t is not None and b is not None
    g, s, n, r = plan.groups, plan.mirrors, x.shape[-1], b.shape[-1]
    if x.stride(0) == 0:  # shared input (x.expand(N, ...)): no copy of x, one x B per pair
        # A batched product over a stride-0 batch (not one wide GEMM), so that a member's numbers do not
        # depend on how the population is sliced into chunks or ranks.
        xb = torch.bmm(x[0].reshape(rows, n).expand(g, rows, n), b)  # (G, rows, r)
        for t in range(s):  # both mirrors see the same x: the second takes -α
            _outer_add(y[:, t], xb, a_t, -plan.alpha if t else plan.alpha, r)
        return
    xb = torch.bmm(x.reshape(g, s * rows, n), b)  # (G, S·rows, r)
    if s == 2:
        xb[:, rows:].neg_()  # mirror members take -E
    _outer_add(y.view(g, s * rows, -1), xb, a_t, plan.alpha, r)


def _outer_add(y: Tensor, xb: Tensor, a_t: Tensor, alpha: float, r: int) -> None:
    """y (G, rows, m) += α · xb (G, rows, r) @ a_t (G, r, m); for r = 1 an elementwise outer product,
    which CPU runs faster than a batch of rank-1 GEMMs."""
    if r == 1:
        y.addcmul_(xb, a_t, value=alpha)
    else:
        y.baddbmm_(xb, a_t, alpha=alpha)


def _add_full_rank(y: Tensor, x: Tensor, plan: _LinearNoise) -> None:
    """y (G, S, rows, m) += σ s_i x_i ε_kᵀ (x: (G, S, rows, n)); O(m·n) per member."""
    assert plan.eps is not None
    eps_t = plan.eps.transpose(1, 2)  # (G, n, m) — a view, never a copy
    if plan.mirrors == 2:
        y[:, 0].baddbmm_(x[:, 0], eps_t, alpha=plan.alpha)
        y[:, 1].baddbmm_(x[:, 1], eps_t, alpha=-plan.alpha)
        return
    xs = x[:, 0] if plan.signs is None else x[:, 0] * plan.signs.to(x.dtype).view(-1, 1, 1)
    y[:, 0].baddbmm_(xs, eps_t, alpha=plan.alpha)


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
        self._device = next(iter(perturbed.values())).noise.table.device if perturbed else torch.device("cpu")
        # Both mirrors of every pair in this slice, in order: one bmm per pair serves both.
        self.paired = antithetic and start % 2 == 0 and count % 2 == 0
        self.calls: dict[int, int] = {}
        self._plans: dict[int, _LinearNoise] = {}
        self._handles: list[Any] = []
        self._overridden: list[nn.Module] = []
        self._announce = _announce(self.info)

    @functools.cached_property
    def _members(self) -> tuple[Tensor, Tensor]:
        """Pair index and sign of every member of the slice (the irregular and generic paths need them)."""
        return member_pairs(self.info.start, self.info.size, self.antithetic, self._device)

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
        if x.dim() < 2 or x.shape[0] != self.info.size:
            self._check_leading(module, x)  # raises
        key = id(module)
        self.calls[key] = self.calls.get(key, 0) + 1
        plan = self._plans.get(key)
        if plan is None:  # once per context: RL calls the same layer every environment step
            plan = self._plans[key] = self._plan_linear(module)
        g, s, m = plan.groups, plan.mirrors, out.shape[-1]
        rows = out.numel() // (g * s * m)
        in_place = out.is_contiguous()  # nn.Linear's output always is: y is a view, out is updated
        y = out.view(g, s, rows, m) if in_place else out.reshape(g, s, rows, m)  # member j·s + t at (j, t)
        if plan.a_t is not None:
            _add_low_rank(y, x, plan, rows)
        elif plan.eps is not None:
            _add_full_rank(y, x.reshape(g, s, rows, x.shape[-1]), plan)
        if plan.beta is not None:  # y_i += σ_b s_i β_k
            y[:, 0].add_(plan.beta, alpha=plan.sigma_b)
            if s == 2:
                y[:, 1].sub_(plan.beta, alpha=plan.sigma_b)
        return None if in_place else y.view(out.shape)

    def _plan_linear(self, module: nn.Linear) -> _LinearNoise:
        """This slice's noise for one Linear, as table views (or, for an irregular slice, cached copies).

        Members are grouped G × S: S = 2 when the slice holds both mirrors of every pair (group = pair,
        the hook applies the signs +1/-1), else S = 1 with each member's sign folded in here."""
        weight = self.perturbed.get(id(module.weight))
        bias = self.perturbed.get(id(module.bias)) if module.bias is not None else None
        k, mirrored = self.info.size, self.paired
        groups = k // 2 if mirrored else k
        signs = None if mirrored or not self.antithetic else self._members[1]  # None: every sign is +1
        plan = _LinearNoise(groups=groups, mirrors=2 if mirrored else 1)
        if weight is not None and weight.noise.spec.low_rank:
            a_t, b_t = (self._per_group(view) for view in weight.noise.factors_t(0, self._pair_end))
            plan.a_t = a_t if signs is None else a_t * signs.to(a_t.dtype).view(-1, 1, 1)  # (G, r, m)
            plan.b = b_t.transpose(1, 2)  # (G, n, r)
            plan.alpha = weight.sigma / math.sqrt(weight.noise.spec.rank)
        elif weight is not None:  # full-rank weight noise (VanillaESTrainer)
            plan.eps = self._per_group(weight.noise.full(0, self._pair_end))  # (G, m, n)
            plan.signs = signs
            plan.alpha = weight.sigma
        if bias is not None:
            beta = self._per_group(bias.noise.full(0, self._pair_end))  # (G, m)
            if signs is not None:
                beta = beta * signs.to(beta.dtype).view(-1, 1)
            plan.beta = beta.unsqueeze(1)  # (G, 1, m), a view for a regular slice
            plan.sigma_b = bias.sigma
        return plan

    @property
    def _pair_end(self) -> int:
        """One past the last pair this slice touches."""
        end = self.info.start + self.info.size
        return (end + 1) // 2 if self.antithetic else end

    def _per_group(self, view: Tensor) -> Tensor:
        """Rows of a per-pair noise view (pairs 0 ..) for this slice's groups: a view for a mirrored
        slice (group = pair) or without antithetic sampling (group = member = pair), an indexed copy for
        an irregular antithetic slice (odd size or odd start: group = member)."""
        if self.paired:
            return view[self.info.start // 2 : self._pair_end]
        if not self.antithetic:
            return view[self.info.start : self.info.start + self.info.size]
        return view[self._members[0]]

    # --------------------------------------------------------------------------- generic path
    def _member_params(self, module: nn.Module) -> dict[str, Tensor]:
        """``{name: (K, *shape)}``: θ + σ s_i E_i for each perturbed parameter of ``module``."""
        stacked = {}
        for name, param in module.named_parameters():
            entry = self.perturbed.get(id(param))
            if entry is not None:
                noise = entry.noise.dense(*self._members)  # (K, *shape)
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
                return torch.func.vmap(one_member, in_dims=in_dims, randomness="different")(stacked, *args)

        return forward
