"""Parameters used elementwise (a norm's weight, a learned position table added to the activations) and
norms: each member's values of the parameter applied to its own rows — activation-sized, no K-fold copy
of anything larger than the parameter itself."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .fallback import vmap_fallback
from .members import in_place, is_activation, is_member_valued, member_values
from .mode import population_mode


def with_member_values(
    mode: population_mode, func: Any, x: Tensor, param: Tensor, param_first: bool, **kw: Any
) -> Tensor:
    """``func(x, P)`` (or ``func(P, x)``) with member i's values of P applied to member i's rows of x.

    P aligns with x's trailing dimensions (a leading 1 of P broadcasts over the batch)."""
    k = mode.info.size
    values = member_values(mode, param)  # (K, *shape)
    shape = tuple(param.shape)
    batch = mode.batch_dim if len(shape) == x.dim() else None  # P's own batch position, if it has one
    if batch is not None and shape[batch] == 1:  # (1, T, d) (or (T, 1, d) sequence-first): broadcast over it
        values, shape = values.squeeze(batch + 1), shape[:batch] + shape[batch + 1 :]
    if len(shape) >= x.dim():
        raise ValueError(
            f"population mode: {mode.name(param)} (shape {tuple(param.shape)}) is combined with a tensor of "
            f"shape {tuple(x.shape)} that has no batch dimension to hold the members"
        )
    per = mode.rows_of(x, f"an operation with {mode.name(param)}")
    xv = x.unsqueeze(0) if per is None else x.view(k, per, *x.shape[1:])  # (K or 1, b, ...)
    pv = values.view(k, 1, *([1] * (x.dim() - 1 - len(shape))), *shape)
    out = func(pv, xv, **kw) if param_first else func(xv, pv, **kw)
    if in_place(func):  # x was updated through its view
        return x
    if per is None:
        out = out.expand(k, mode.shared_rows() // k, *out.shape[2:])
    return out.reshape(-1, *out.shape[2:])


def elementwise(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Tensor:
    a, b = args[0], args[1]
    if is_member_valued(mode, a) and is_activation(mode, b):
        if in_place(func):
            raise ValueError(f"population mode: in-place {func.__name__} on the perturbed {mode.name(a)}")
        return with_member_values(mode, func, b, a, param_first=True, **kwargs)
    if is_activation(mode, a) and is_member_valued(mode, b):
        return with_member_values(mode, func, a, b, param_first=False, **kwargs)
    return vmap_fallback(mode, func, args, kwargs)


def norm(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Tensor:
    """``F.layer_norm``/``F.rms_norm``: normalise with the plain parameters, then apply each member's
    perturbed weight (and bias) to its rows."""
    names = ("input", "normalized_shape", "weight", "bias", "eps") if func is F.layer_norm else (
        "input", "normalized_shape", "weight", "eps")  # fmt: skip
    call = dict(zip(names, args)) | kwargs
    x, weight, bias = call["input"], call.get("weight"), call.get("bias")
    if not is_activation(mode, x):
        return vmap_fallback(mode, func, args, kwargs)
    member_w = weight is not None and is_member_valued(mode, weight)
    member_b = bias is not None and is_member_valued(mode, bias)
    call["weight"] = None if member_w else weight
    if "bias" in call:
        call["bias"] = None if member_b else bias
    y = func(**call)  # a fresh tensor: the members' affine transform may go in place
    trailing = tuple(call["normalized_shape"]) if not isinstance(call["normalized_shape"], int) else (
        call["normalized_shape"],)  # fmt: skip
    per = mode.rows_of(y, f"the norm of {mode.name(weight if member_w else bias)}")
    if per is not None and y.dim() > len(trailing):
        k = mode.info.size
        y_members = y.view(k, per, *y.shape[1:])  # (K, b, ..., *normalized_shape)
        ones = [1] * (y.dim() - 1 - len(trailing))
        if member_w:
            y_members.mul_(member_values(mode, weight).view(k, 1, *ones, *trailing))
        if member_b:
            y_members.add_(member_values(mode, bias).view(k, 1, *ones, *trailing))
        return y
    if member_w:
        y = with_member_values(mode, torch.mul, y, weight, param_first=False)
    if member_b:
        y = with_member_values(mode, torch.add, y, bias, param_first=False)
    return y
