"""Which handler a torch call on a perturbed parameter goes to."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import multi_head_attention
from .convolution import conv
from .elementwise import elementwise, norm
from .embedding import embedding
from .experts import BMM, GROUPED_MM, expert_bmm, grouped_mm
from .fallback import derive, vmap_fallback
from .members import is_activation, is_member_valued
from .mode import population_mode
from .products import linear, right_product


def _elementwise_funcs() -> set[Any]:
    names = ("add", "sub", "mul", "div", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
             "__truediv__", "__rtruediv__", "add_", "sub_", "mul_", "div_", "__iadd__", "__isub__", "__imul__",
             "__itruediv__")  # fmt: skip
    funcs = {getattr(Tensor, n) for n in names}
    return funcs | {torch.add, torch.sub, torch.mul, torch.div}


ELEMENTWISE = _elementwise_funcs()
RIGHT_PRODUCTS = {torch.addmm, Tensor.addmm, torch.matmul, Tensor.matmul, Tensor.__matmul__}
CONVS = {F.conv1d, F.conv2d}
NORMS = {F.layer_norm} | ({F.rms_norm} if hasattr(F, "rms_norm") else set())


def dispatch(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Any:
    if func is F.multi_head_attention_forward:
        return multi_head_attention(mode, *args, **kwargs)
    if func is Tensor.copy_ and not is_member_valued(mode, args[0]):  # copying a parameter out copies θ
        return func(*args, **kwargs)
    if func is Tensor.__getitem__ or not any(is_activation(mode, a) for a in (*args, *kwargs.values())):
        return derive(mode, func, args, kwargs)
    if mode.batch_dim == 1:
        return _sequence_first(mode, func, args, kwargs)
    return _route(mode, func, args, kwargs)


def _route(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Any:
    if func is F.linear:
        return linear(mode, *args, **kwargs)
    if func is F.embedding:
        return embedding(mode, *args, **kwargs)
    if func in RIGHT_PRODUCTS:
        return right_product(mode, func, args, kwargs)
    if func in CONVS:
        return conv(mode, func, args, kwargs)
    if func in NORMS:
        return norm(mode, func, args, kwargs)
    if func in GROUPED_MM or func in BMM:  # expert stacks (E, m, n) of a mixture of experts
        out = grouped_mm(mode, func, args, kwargs) if func in GROUPED_MM else expert_bmm(mode, args, kwargs)
        if out is not None:
            return out
    if func in ELEMENTWISE and len(args) >= 2:
        return elementwise(mode, func, args, kwargs)
    return vmap_fallback(mode, func, args, kwargs)


def _sequence_first(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Any:
    """batch_dim=1: bring the batch of every sequence-first activation to the front, compute, and move it back.

    An activation already batch-first — a pooled ``(K·b, d)`` after ``mean(dim=0)`` — holds the K·b rows at
    dimension 0 and not at dimension 1: it is left as it is, and so is the result."""
    rows = mode.shared_rows()
    moved = False

    def front(t: Any) -> Any:
        nonlocal moved
        if not (is_activation(mode, t) and t.dim() >= 2):
            return t
        if t.shape[0] == rows and t.shape[1] not in (rows, 1):  # batch-first already (pooled)
            return t
        moved = True
        return t.transpose(0, 1)

    def back(o: Any) -> Any:
        return o.transpose(0, 1) if moved and isinstance(o, Tensor) and o.dim() >= 2 else o

    out = _route(mode, func, tuple(front(a) for a in args), {key: front(v) for key, v in kwargs.items()})
    return tuple(back(o) for o in out) if isinstance(out, tuple) else back(out)
