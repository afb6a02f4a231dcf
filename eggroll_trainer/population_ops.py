"""The population-mode handlers: what each torch call that receives a perturbed parameter computes.

Shapes: K members in this call, b rows per member (so the batch holds R = K·b rows), r the rank, G groups
of S mirrors (S = 2 when a call holds both members of every antithetic pair, else 1).

Low-rank noise on a parameter P read as the matrix m×n is E = A Bᵀ/√r, A (m, r), B (n, r). Where the
forward consumes P in a product, member i's extra term is rank-r work:

* ``F.linear``  (y = x Pᵀ):  y_i += σ s_i (x_i B) Aᵀ/√r
* ``addmm``/``matmul`` with P on the right (y = x P, Hugging Face ``Conv1D``):  y_i += σ s_i (x_i A) Bᵀ/√r
* ``F.embedding`` (y = P[ids]):  y_i += σ s_i A[ids_i] Bᵀ/√r  — a gather of r numbers per token
* ``F.conv*d`` with the kernel read as out × (in·k):  y_i += σ s_i/√r · A · conv(x_i, B̃), B̃ = Bᵀ as (r, in, k…)

1-D parameters and parameters used elementwise get the member's dense values at that one use
(activation-sized). Everything else: ``torch.func.vmap`` over the members of that one call.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .population import Perturbed, population_mode


# ---------------------------------------------------------------------------------- member noise
def member_delta(mode: population_mode, param: Tensor) -> Tensor:
    """σ s_i E_i for every member: (K, *shape), dense (for 1-D parameters and elementwise uses)."""
    key = ("delta", id(param))
    if key not in mode.plans:
        entry = mode.perturbed[id(param)]
        mode.plans[key] = entry.noise.dense(*mode.slice.members).mul_(entry.sigma)
    return mode.plans[key]


def member_values(mode: population_mode, t: Tensor) -> Tensor:
    """θ + σ s_i E_i for every member (K, *shape), of a perturbed parameter or of a view derived from one."""
    if id(t) in mode.derived:
        _, source, fn = mode.derived[id(t)]
        return fn(member_values(mode, source))
    mode.seen.add(id(t))
    return member_delta(mode, t) + t


def member_factors(mode: population_mode, param: Tensor) -> tuple[Tensor, Tensor]:
    """Per member Aᵀ (K, r, m) scaled by σ s_i/√r (padding rows zeroed) and Bᵀ (K, r, n): small copies."""
    key = ("factors", id(param))
    if key not in mode.plans:
        entry = mode.perturbed[id(param)]
        pairs, signs = mode.slice.members
        a_t, b_t = entry.noise.factors_t(0, mode.slice.pair_end)
        scale = signs.to(a_t.dtype).view(-1, 1, 1) * (entry.sigma / math.sqrt(entry.noise.spec.rank))
        mode.plans[key] = entry.noise.masked_a_t(a_t[pairs]) * scale, b_t[pairs]
    return mode.plans[key]


def is_member_valued(mode: population_mode, t: Any) -> bool:
    return isinstance(t, Tensor) and (id(t) in mode.perturbed or id(t) in mode.derived)


def is_activation(mode: population_mode, t: Any) -> bool:
    """A tensor the forward computed (not a parameter, buffer or perturbed view) with a batch dimension."""
    return (
        isinstance(t, Tensor)
        and t.dim() >= 1
        and id(t) not in mode.params
        and id(t) not in mode.buffers
        and id(t) not in mode.derived
    )


# ------------------------------------------------------------------------------------ products
@dataclass
class ProductNoise:
    """One weight's (and bias's) noise for the members of a call, laid out G × S (see module docstring)."""

    groups: int  # G
    mirrors: int  # S ∈ {1, 2}
    a_t: Tensor | None = None  # (G, r, out): the output-side factor (sign folded in when S = 1)
    b: Tensor | None = None  # (G, in, r): the input-side factor
    eps_t: Tensor | None = None  # (G, in, out): full-rank weight noise as it multiplies x
    signs: Tensor | None = None  # (G,) signs for ``eps_t`` when S = 1 (None: all +1)
    alpha: float = 0.0  # σ/√r (low rank) or σ (full rank)
    beta: Tensor | None = None  # (G, 1, out): bias noise (sign folded in when S = 1)
    sigma_b: float = 0.0


def product_noise(mode: population_mode, weight: Tensor, bias: Tensor | None, right: bool) -> ProductNoise:
    """The (cached) noise of ``x Wᵀ + b`` (``right=False``) or ``x W + b`` (``right=True``) for this call:
    strided views of the noise table for a regular slice, small indexed copies otherwise."""
    key = ("product", id(weight), id(bias), right)
    if key in mode.plans:
        return mode.plans[key]
    sl = mode.slice
    w_entry = mode.perturbed.get(id(weight))
    b_entry = mode.perturbed.get(id(bias)) if bias is not None else None
    signs = None if sl.paired or not sl.antithetic else sl.members[1]  # None: every sign is +1
    plan = ProductNoise(groups=sl.size // 2 if sl.paired else sl.size, mirrors=2 if sl.paired else 1)
    if w_entry is not None and w_entry.noise.spec.low_rank:
        a_t, b_t = w_entry.noise.factors_t(0, sl.pair_end)  # (P, r, m), (P, r, n) views
        a_t = sl.per_group(w_entry.noise.masked_a_t(a_t))
        b_t = sl.per_group(b_t)
        out_t, in_t = (b_t, a_t) if right else (a_t, b_t)
        plan.a_t = out_t if signs is None else out_t * signs.to(out_t.dtype).view(-1, 1, 1)
        plan.b = in_t.transpose(1, 2)  # (G, in, r), a transposed view
        plan.alpha = w_entry.sigma / math.sqrt(w_entry.noise.spec.rank)
        mode.seen.add(id(weight))
    elif w_entry is not None:  # full-rank weight noise (VanillaESTrainer)
        eps = sl.per_group(w_entry.noise.full(0, sl.pair_end))  # (G, m, n) view
        plan.eps_t = eps if right else eps.transpose(1, 2)
        plan.signs = signs
        plan.alpha = w_entry.sigma
        mode.seen.add(id(weight))
    if b_entry is not None:
        beta = sl.per_group(b_entry.noise.full(0, sl.pair_end))  # (G, out)
        if signs is not None:
            beta = beta * signs.to(beta.dtype).view(-1, 1)
        plan.beta = beta.unsqueeze(1)
        plan.sigma_b = b_entry.sigma
        mode.seen.add(id(bias))
    mode.plans[key] = plan
    return plan


def product(
    mode: population_mode, x: Tensor, weight: Tensor, bias: Tensor | None, right: bool, what: str
) -> Tensor:
    """``F.linear(x, W, b)`` (or ``x W + b``) for every member: the shared base product once, plus each
    member's rank-r term added in place. Nothing of size K·m·n is formed."""
    k = mode.info.size
    if x.dim() < 2:
        raise ValueError(
            f"population mode: {what} got a 1-D input of shape {tuple(x.shape)}: it needs a batch"
        )
    per = mode.rows_of(x, what)

    def base(inp: Tensor) -> Tensor:
        if right:
            return torch.matmul(inp, weight) if bias is None else torch.matmul(inp, weight).add_(bias)
        return F.linear(inp, weight, bias)

    shared = per is None or x.stride(0) == 0  # one block of rows serves every member: no copy of x
    if shared:
        total = mode.shared_rows() if per is None else x.shape[0]
        y = base(x[:1]).expand(total, *([-1] * (x.dim() - 1))).contiguous()  # (R, ..., out)
    else:
        y = base(x)
        y = y if y.is_contiguous() else y.contiguous()
    plan = product_noise(mode, weight, bias, right)
    g, s, out = plan.groups, plan.mirrors, y.shape[-1]
    rows = y.numel() // (k * out)  # per member
    y4 = y.view(g, s, rows, out)  # member j·S + t at (j, t)
    n = x.shape[-1]
    if plan.a_t is not None:
        if shared:
            x_block = x[:1].expand(rows // math.prod(x.shape[1:-1]), *x.shape[1:]).reshape(rows, n)
            xb = torch.bmm(x_block.expand(g, rows, n), plan.b)  # (G, rows, r): one x B per group
            for t in range(s):  # both mirrors see the same x: the second takes -α
                _outer_add(y4[:, t], xb, plan.a_t, -plan.alpha if t else plan.alpha)
        else:
            xb = torch.bmm(x.reshape(g, s * rows, n), plan.b)  # (G, S·rows, r)
            if s == 2:
                xb[:, rows:].neg_()  # mirror members take -E
            _outer_add(y4.view(g, s * rows, out), xb, plan.a_t, plan.alpha)
    elif plan.eps_t is not None:
        x4 = x[:1].reshape(1, 1, -1, n).expand(g, s, rows, n) if shared else x.reshape(g, s, rows, n)
        for t in range(s):
            xs = x4[:, t] if plan.signs is None else x4[:, t] * plan.signs.to(x.dtype).view(-1, 1, 1)
            y4[:, t].baddbmm_(xs, plan.eps_t, alpha=-plan.alpha if t else plan.alpha)
    if plan.beta is not None:  # y_i += σ_b s_i β_k
        y4[:, 0].add_(plan.beta, alpha=plan.sigma_b)
        if s == 2:
            y4[:, 1].sub_(plan.beta, alpha=plan.sigma_b)
    return y


def _outer_add(y: Tensor, xb: Tensor, a_t: Tensor, alpha: float) -> None:
    """y (G, rows, out) += α · xb (G, rows, r) @ a_t (G, r, out); for r = 1 an elementwise outer product,
    which CPU runs faster than a batch of rank-1 GEMMs."""
    if a_t.shape[1] == 1:
        y.addcmul_(xb, a_t, value=alpha)
    else:
        y.baddbmm_(xb, a_t, alpha=alpha)


def linear(mode: population_mode, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    if is_member_valued(mode, weight) and (id(weight) in mode.derived or weight.dim() != 2):
        return vmap_fallback(mode, F.linear, (x, weight, bias), {})
    if bias is not None and id(bias) in mode.derived:
        return vmap_fallback(mode, F.linear, (x, weight, bias), {})
    return product(mode, x, weight, bias, right=False, what=f"F.linear with {mode.name(weight)}")


def right_product(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Tensor:
    """``torch.addmm(bias, x, W)`` / ``x @ W`` with the perturbed W on the right."""
    if func in (torch.addmm, Tensor.addmm):
        bias, x, weight = args[:3]
        plain = kwargs.get("beta", 1) == 1 and kwargs.get("alpha", 1) == 1 and len(args) == 3
    else:
        (x, weight), bias, plain = args[:2], None, len(args) == 2
    ok = (
        plain
        and is_activation(mode, x)
        and x.dim() >= 2
        and id(weight) in mode.perturbed
        and weight.dim() == 2
        and (bias is None or bias.dim() == 1)
        and not (bias is not None and id(bias) in mode.derived)
    )
    if not ok:
        return vmap_fallback(mode, func, args, kwargs)
    return product(mode, x, weight, bias, right=True, what=f"a product with {mode.name(weight)}")


# ----------------------------------------------------------------------------- embedding, conv
def embedding(
    mode: population_mode,
    ids: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> Tensor:
    """y_i = P[ids_i] + σ s_i A[ids_i] Bᵀ/√r: the shared lookup plus a gather of r numbers per token."""
    if max_norm is not None:
        raise ValueError(
            f"population mode: the embedding {mode.name(weight)} has max_norm set, which renormalises the "
            "weight in place; use sequential evaluation (batched=False)"
        )
    if id(weight) in mode.derived or not mode.perturbed[id(weight)].noise.spec.low_rank:
        return vmap_fallback(mode, F.embedding, (ids, weight, padding_idx), {})
    k = mode.info.size
    per = mode.rows_of(ids, f"the embedding {mode.name(weight)}")
    y = F.embedding(ids, weight, padding_idx)  # (R, ..., d): the shared lookup
    if per is None:
        ids = ids.expand(mode.shared_rows(), *ids.shape[1:])
        y = y.expand(mode.shared_rows(), *y.shape[1:])
    y = y.contiguous()
    a_t, b_t = member_factors(mode, weight)  # (K, r, V) scaled, (K, r, d)
    mode.seen.add(id(weight))
    index = ids.reshape(k, 1, -1).expand(k, a_t.shape[1], -1)  # (K, r, L)
    gathered = torch.gather(a_t, 2, index)  # (K, r, L): A_i[ids_i]
    y.view(k, -1, y.shape[-1]).baddbmm_(gathered.transpose(1, 2), b_t)  # (K, L, d)
    return y


def conv(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Tensor:
    """conv(x_i, W + σ s_i E_i) = conv(x_i, W) + σ s_i/√r · A_i conv(x_i, B̃_i): a grouped convolution of
    all members to r channels each, then a 1×1 mix by A_i."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    call = dict(zip(names, args)) | kwargs
    x, weight, bias = call["input"], call["weight"], call.get("bias")
    rest = {key: call[key] for key in ("stride", "padding", "dilation") if key in call}
    fine = (
        call.get("groups", 1) == 1
        and is_activation(mode, x)
        and id(weight) in mode.perturbed
        and mode.perturbed[id(weight)].noise.spec.low_rank
        and not (bias is not None and id(bias) in mode.derived)
    )
    if not fine:
        return vmap_fallback(mode, func, args, kwargs)
    k = mode.info.size
    spatial = weight.dim() - 2
    if x.dim() == spatial + 3:  # the (K, B, C, ...) form: members and their batch as K·B rows
        y = conv(mode, func, (x.flatten(0, 1), weight, bias), {**rest, "groups": 1})
        return y.view(*x.shape[:2], *y.shape[1:])
    per = mode.rows_of(x, f"the convolution {mode.name(weight)}")
    if per is None:
        x, per = x.expand(mode.shared_rows(), *x.shape[1:]), mode.shared_rows() // k
    plain_bias = None if bias is None or id(bias) in mode.perturbed else bias
    y = func(x, weight, plain_bias, **rest).contiguous()  # (R, out, *S')
    a_t, b_t = member_factors(mode, weight)  # (K, r, out) scaled, (K, r, in·k…)
    mode.seen.add(id(weight))
    r, channels = a_t.shape[1], x.shape[1]
    x_groups = x.reshape(k, per, *x.shape[1:]).transpose(0, 1).reshape(per, k * channels, *x.shape[2:])
    z = func(x_groups, b_t.reshape(k * r, *weight.shape[1:]), None, groups=k, **rest)  # (b, K·r, *S')
    z = z.reshape(per, k, r, -1).permute(1, 2, 0, 3).reshape(k, r, -1)  # (K, r, b·S')
    delta = torch.bmm(a_t.transpose(1, 2), z)  # (K, out, b·S')
    out = y.shape[1]
    y.view(k, per, out, -1).add_(delta.view(k, out, per, -1).transpose(1, 2))
    if bias is not None and id(bias) in mode.perturbed:
        values = member_values(mode, bias)  # (K, out)
        y.view(k, per, out, -1).add_(values.view(k, 1, out, 1))
    return y


# ------------------------------------------------------------------------- elementwise, norms
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
    if _in_place(func):  # x was updated through its view
        return x
    if per is None:
        out = out.expand(k, mode.shared_rows() // k, *out.shape[2:])
    return out.reshape(-1, *out.shape[2:])


def elementwise(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Tensor:
    a, b = args[0], args[1]
    if is_member_valued(mode, a) and is_activation(mode, b):
        if _in_place(func):
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
    y = func(**call)
    if member_w:
        y = with_member_values(mode, torch.mul, y, weight, param_first=False)
    if member_b:
        y = with_member_values(mode, torch.add, y, bias, param_first=False)
    return y


# ------------------------------------------------------------------------ derived and fallback
def derive(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Any:
    """An op on perturbed parameters alone (``W.t()``, ``pos[:T]``, ``w.to(dtype)``): computed on θ, and
    remembered, so that a later use applies the same op to each member's values."""
    if args and is_member_valued(mode, args[0]) and (_in_place(func) or func is Tensor.__setitem__):
        raise ValueError(f"population mode: in-place {_name(func)} on the perturbed {mode.name(args[0])}")
    out = func(*args, **kwargs)
    index = next((i for i, a in enumerate(args) if is_member_valued(mode, a)), None)
    if not isinstance(out, Tensor) or index is None:  # (a parameter passed as a keyword: a constant)
        return out
    source = args[index]

    def per_member(values: Tensor) -> Tensor:
        def one(v: Tensor) -> Tensor:
            return func(*args[:index], v, *args[index + 1 :], **kwargs)

        return torch.func.vmap(one)(values)

    mode.derived[id(out)] = (out, source, per_member)
    weakref.finalize(out, mode.derived.pop, id(out), None)
    return out


def vmap_fallback(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Any:
    """Any other call: ``torch.func.vmap`` over the members, each with its dense parameter values and its
    own rows of every batched input."""
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
            f"population mode: {_name(func)} on the perturbed parameter {mode.name(param)} "
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


# ------------------------------------------------------------------------------------ dispatch
_IN_PLACE = {"add_", "sub_", "mul_", "div_", "__iadd__", "__isub__", "__imul__", "__itruediv__"}


def _name(func: Any) -> str:
    return getattr(func, "__name__", repr(func))


def _in_place(func: Any) -> bool:
    name = _name(func)
    return name in _IN_PLACE or (name.endswith("_") and not name.endswith("__"))


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
    from .population_attention import multi_head_attention

    if func is F.multi_head_attention_forward:
        return multi_head_attention(mode, *args, **kwargs)
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
    if func in ELEMENTWISE and len(args) >= 2:
        return elementwise(mode, func, args, kwargs)
    return vmap_fallback(mode, func, args, kwargs)


def _sequence_first(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Any:
    """batch_dim=1: bring the batch of every activation to the front, compute, and move it back."""

    def front(t: Any) -> Any:
        return t.transpose(0, 1) if is_activation(mode, t) and t.dim() >= 2 else t

    out = _route(mode, func, tuple(front(a) for a in args), {key: front(v) for key, v in kwargs.items()})
    return tuple(o.transpose(0, 1) if isinstance(o, Tensor) and o.dim() >= 2 else o for o in out) if isinstance(
        out, tuple) else (out.transpose(0, 1) if isinstance(out, Tensor) and out.dim() >= 2 else out)  # fmt: skip


__all__ = ["Perturbed", "dispatch", "product", "member_values", "with_member_values"]
