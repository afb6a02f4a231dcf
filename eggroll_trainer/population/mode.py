"""The population-mode context: a ``TorchFunctionMode`` that routes calls on perturbed parameters.

See the package docstring for the batch convention and what each call computes."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..noise.params import ParamNoise, member_pairs
from .cache import CallCache
from .current import PopulationInfo, announce


@dataclass
class Perturbed:
    """One perturbed parameter: its noise for this generation and its group's σ."""

    noise: ParamNoise
    sigma: float


@dataclass(frozen=True)
class MemberSlice:
    """Members ``start .. start+size-1`` and how they map onto noise pairs."""

    start: int
    size: int
    antithetic: bool
    device: torch.device

    @property
    def paired(self) -> bool:
        """Both mirrors of every pair, in order: one product per pair serves both (group = pair)."""
        return self.antithetic and self.start % 2 == 0 and self.size % 2 == 0

    @property
    def pair_end(self) -> int:
        """One past the last pair this slice touches."""
        end = self.start + self.size
        return (end + 1) // 2 if self.antithetic else end

    @functools.cached_property
    def members(self) -> tuple[Tensor, Tensor]:
        """Pair index and sign ±1 of every member, (K,) each."""
        return member_pairs(self.start, self.size, self.antithetic, self.device)

    def per_group(self, view: Tensor) -> Tensor:
        """Rows of a per-pair view (pairs 0 ..) for this slice's groups: a view when group = pair (mirrored
        slice, or no antithetic sampling), an indexed copy for an irregular antithetic slice (group = member)."""
        if self.paired or not self.antithetic:
            first = self.start // 2 if self.paired else self.start
            whole = first == 0 and view.shape[0] == self.pair_end  # the usual call: every pair, as it is
            return view if whole else view[first : self.pair_end]
        return view[self.members[0]]


def _parameters_and_buffers(model: nn.Module) -> tuple[dict[int, str], dict[int, Tensor], set[int]]:
    """``{id: qualified name}`` and ``{id: parameter}`` of every parameter (a shared one under its last
    name, as ``named_parameters(remove_duplicate=False)`` lists it), and the ids of every buffer: one walk
    over the modules (half the time of ``named_parameters`` plus ``buffers``; this runs every call)."""
    names: dict[int, str] = {}
    params: dict[int, Tensor] = {}
    buffers: set[int] = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, p in module._parameters.items():
            if p is not None:
                names[id(p)], params[id(p)] = f"{prefix}.{name}" if prefix else name, p
        buffers.update(id(b) for b in module._buffers.values() if b is not None)
    return names, params, buffers


class population_mode(TorchFunctionMode):
    """Context manager: ``model`` evaluates members ``start .. start+count-1`` of the population.

    Args:
        model: the user's module (unchanged after exit).
        perturbed: ``{id(param): Perturbed}`` for every perturbed parameter of the model.
        start, count, total: the member slice and the population size.
        antithetic: whether members 2k and 2k+1 mirror pair k.
        batch_dim: the activations' batch dimension (0: batch-first; 1: sequence-first).
    """

    #: Where a torch call on a perturbed parameter goes: ``dispatch.dispatch``, installed by the package's
    #: ``__init__`` (the handlers it routes to read this module, so this module does not import them).
    route: Callable[[population_mode, Any, tuple, dict], Any]
    #: Forward pre-hooks that record expert routing (``experts.watch_routing``), installed the same way.
    watch_routing: Callable[[population_mode], list[Any]]

    def __init__(
        self,
        model: nn.Module,
        perturbed: dict[int, Perturbed],
        start: int,
        count: int,
        total: int,
        antithetic: bool,
        batch_dim: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.perturbed = perturbed
        self.info = PopulationInfo(size=count, start=start, total=total)
        self.batch_dim = batch_dim
        self.names, self.params, self.buffers = _parameters_and_buffers(model)
        missing = [pid for pid in perturbed if pid not in self.names]
        if missing:
            raise ValueError(
                f"batched evaluation: {len(missing)} trained parameter(s) are not parameters of `model`"
            )
        device = next(iter(perturbed.values())).noise.table.device if perturbed else torch.device("cpu")
        self.slice = MemberSlice(start, count, antithetic, device)
        self.rows_per_member: int | None = None  # b, from the model's input (or the first batched call)
        self.seen: set[int] = set()
        self.cache = CallCache()  # per context: RL calls the same layer every environment step
        # id(tensor computed from perturbed parameters) -> (weakref to it, its perturbed sources, fn, recipe)
        self.derived: dict[int, tuple[Any, tuple[Tensor, ...], Any, Any]] = {}
        self._hook: Any = None
        self._announce = announce(self.info)

    # ----------------------------------------------------------------------------------- context
    def __enter__(self) -> population_mode:
        self._hook = self.model.register_forward_pre_hook(self._root_input, with_kwargs=True)
        self._routing_hooks = self.watch_routing(self)  # expert stacks: which member owns a sorted row
        try:
            self._announce.__enter__()
            super().__enter__()
        except BaseException:
            self._hook.remove()
            for hook in self._routing_hooks:
                hook.remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._announce.__exit__(None, None, None)
            self._hook.remove()
            for hook in self._routing_hooks:
                hook.remove()
            self.derived.clear()

    def warn_unused(self) -> None:
        """Warn about perturbed parameters no call received: their perturbation could not reach the fitness."""
        unused = [self.names[pid] for pid in self.perturbed if pid not in self.seen]
        if unused:
            warnings.warn(
                "batched evaluation: the perturbed parameter(s) " + ", ".join(unused) + " never reached a "
                "torch call in the forward (used through .data, or only outside the model?), so their "
                "perturbation did not reach the fitness; use sequential evaluation for such models",
                RuntimeWarning,
                stacklevel=3,
            )

    def _root_input(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """b from the model's input: the first tensor argument (or ``input_ids``/``inputs_embeds``)."""
        first = next((a for a in args if isinstance(a, Tensor)), None)
        if first is None:
            first = next(
                (kwargs[k] for k in ("input_ids", "inputs_embeds") if isinstance(kwargs.get(k), Tensor)), None
            )
        if first is None or first.dim() <= self.batch_dim:
            return
        rows = first.shape[self.batch_dim]
        if rows % self.info.size and rows != 1:
            raise ValueError(self._batch_message(f"the input of {type(module).__name__}", first))
        if rows != 1:
            self.rows_per_member = rows // self.info.size

    # ------------------------------------------------------------------------------- dispatch
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        perturbed, derived = self.perturbed, self.derived
        hit = any(isinstance(a, Tensor) and (id(a) in perturbed or id(a) in derived) for a in args) or any(
            isinstance(a, Tensor) and (id(a) in perturbed or id(a) in derived) for a in kwargs.values()
        )
        if not hit:
            return func(*args, **kwargs)
        return self.route(self, func, args, kwargs)

    # ------------------------------------------------------------------------------- batch rows
    def rows_of(self, x: Tensor, what: str) -> int | None:
        """Rows per member of ``x`` (batch at dim 0), or ``None`` when ``x`` is shared (batch 1)."""
        if x.dim() == 0:
            raise ValueError(self._batch_message(what, x))
        rows, k = x.shape[0], self.info.size
        if rows % k == 0:
            if self.rows_per_member is None:
                self.rows_per_member = rows // k
            return rows // k
        if rows == 1:
            return None
        raise ValueError(self._batch_message(what, x))

    def shared_rows(self) -> int:
        """K·b: the rows a shared (batch 1) input's output spreads to."""
        return self.info.size * (self.rows_per_member or 1)

    def _batch_message(self, what: str, x: Tensor) -> str:
        k = self.info.size
        dim = "dimension 1 (batch_dim=1)" if self.batch_dim else "dimension 0"
        return (
            f"population mode: {what} got a tensor of shape {tuple(x.shape)}; in population mode the batch "
            f"({dim}) holds K·b rows, member-major, with K = {k} members (or 1 row shared by all): use "
            f"x.expand({k}, *x.shape) for shared data or x.repeat({k}, 1, ...) for b rows per member"
            + ("" if self.batch_dim else "; for sequence-first models pass batch_dim=1")
        )

    def name(self, param: Tensor) -> str:
        """The qualified name of a perturbed parameter (or of the one a derived view comes from)."""
        while id(param) in self.derived:
            param = self.derived[id(param)][1][0]  # (names the first source of a derived tensor)
        return self.names.get(id(param), "<parameter>")
