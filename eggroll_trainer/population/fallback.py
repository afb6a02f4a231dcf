"""What has no fast path: ops on parameters alone become *derived* tensors (the op is replayed on each
member's values where they are used); any other call runs under ``torch.func.vmap`` over the members."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from .experts import refuse_one_expert
from .members import in_place, is_activation, is_member_valued, member_values, name_of
from .mode import population_mode


def derive(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Any:
    """An op on perturbed parameters alone (``W.t()``, ``pos[:T]``, ``w.to(dtype)``, ``U @ V``,
    ``torch._weight_norm(v, g)``): computed on θ, and remembered, so that a later use applies the same op to
    each member's values of *every* perturbed argument (positional or keyword). A tuple result (``W.chunk(3)``)
    is remembered element by element.

    The record holds the result only weakly (``mode.derived`` maps ``id(out)`` to a weak reference): when the
    forward drops the result, its record goes too, so a long ``generate()`` does not accumulate them."""
    if args and is_member_valued(mode, args[0]) and (in_place(func) or func is Tensor.__setitem__):
        raise ValueError(f"population mode: in-place {name_of(func)} on the perturbed {mode.name(args[0])}")
    out = func(*args, **kwargs)
    slots = [i for i, a in enumerate(args) if is_member_valued(mode, a)]
    keys = [key for key, v in kwargs.items() if is_member_valued(mode, v)]
    sources = tuple(args[i] for i in slots) + tuple(kwargs[key] for key in keys)
    if not sources:
        return out

    def per_member(*values: Tensor) -> Any:  # values: (K, *shape) of each source, in ``sources`` order
        def one(*vs: Tensor) -> Any:
            call_args = list(args)
            for i, v in zip(slots, vs):
                call_args[i] = v
            return func(*call_args, **(kwargs | dict(zip(keys, vs[len(slots) :]))))

        return torch.func.vmap(one)(*values)

    recipe = (func, args, kwargs)  # how it was made: an expert handler reads ``W[expert_ids]`` back from it
    if isinstance(out, Tensor):
        _remember(mode, out, sources, per_member, recipe)
    elif isinstance(out, (tuple, list)):
        for j, part in enumerate(out):
            if isinstance(part, Tensor):
                _remember(mode, part, sources, lambda *values, j=j: per_member(*values)[j], None)
    return out


def _remember(mode: population_mode, out: Tensor, sources: tuple[Tensor, ...], fn: Any, recipe: Any) -> None:
    """Record ``out`` as derived from ``sources`` (held strongly: a chain of views stays resolvable) by
    ``fn``; the record is dropped as soon as ``out`` itself is freed (before its id can be reused)."""
    if id(out) in mode.perturbed:  # the op returned a parameter itself (``w.to(w.dtype)``): nothing derived
        return
    mode.derived[id(out)] = (weakref.ref(out), sources, fn, recipe)
    weakref.finalize(out, mode.derived.pop, id(out), None)


def vmap_fallback(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Any:
    """Any other call: ``torch.func.vmap`` over the members, each with its dense parameter values and its
    own rows of every batched input."""
    refuse_one_expert(mode, args, kwargs)
    k = mode.info.size
    flat = list(args) + list(kwargs.values())
    inputs, in_dims, batched = [], [], False
    param = next(a for a in flat if is_member_valued(mode, a))
    for a in flat:
        if is_member_valued(mode, a):
            inputs.append(member_values(mode, a))
            in_dims.append(0)
        elif is_activation(mode, a) and a.shape[0] % k == 0:
            inputs.append(a.reshape(k, a.shape[0] // k, *a.shape[1:]))
            in_dims.append(0)
            batched = True
        else:
            inputs.append(a)
            in_dims.append(None)
    positional, names = len(args), list(kwargs)

    def one(*values: Any) -> Any:
        return func(*values[:positional], **dict(zip(names, values[positional:])))

    try:
        out = torch.func.vmap(one, in_dims=tuple(in_dims), randomness="different")(*inputs)
    except Exception as error:
        raise RuntimeError(
            f"population mode: {name_of(func)} on the perturbed parameter {mode.name(param)} "
            f"has no fast path and fails under torch.func.vmap ({type(error).__name__}: {error}); use "
            "sequential evaluation (batched=False) for this model"
        ) from error

    def rows(t: Any) -> Any:  # (K, b, ...) -> (K·b, ...); a shared input's (K, 1, ...) -> (K·b, ...)
        if not isinstance(t, Tensor) or t.dim() < 2:
            return t
        if batched:
            return t.reshape(-1, *t.shape[2:])
        if t.shape[1] == 1:
            return t.reshape(k, *t.shape[2:]).repeat_interleave(mode.shared_rows() // k, dim=0)
        return t

    return tuple(rows(t) for t in out) if isinstance(out, tuple) else rows(out)
