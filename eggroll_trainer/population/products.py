"""Products with a perturbed weight: shared base product + each member's rank-r term.

Shapes: K members in this call, b rows per member (so the batch holds R = K·b rows), r the rank, G groups
of S mirrors (S = 2 when a call holds both members of every antithetic pair, else 1).

Low-rank noise on a parameter P read as the matrix m×n is E = A Bᵀ/√r, A (m, r), B (n, r). Where the
forward consumes P in a product, member i's extra term is rank-r work:

* ``F.linear``  (y = x Pᵀ):  y_i += σ s_i (x_i B) Aᵀ/√r
* ``addmm``/``matmul`` with P on the right (y = x P, Hugging Face ``Conv1D``):  y_i += σ s_i (x_i A) Bᵀ/√r
* ``F.embedding`` (y = P[ids]):  y_i += σ s_i A[ids_i] Bᵀ/√r  — a gather of r numbers per token
  (``embedding``)
* ``F.conv*d`` with the kernel read as out × (in·k):  y_i += σ s_i/√r · A · conv(x_i, B̃), B̃ = Bᵀ as (r, in, k…)
  (``convolution``)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .fallback import vmap_fallback
from .members import (
    ProductNoise,
    is_activation,
    is_member_valued,
    product_noise,
)
from .mode import population_mode


def product(
    mode: population_mode, x: Tensor, weight: Tensor, bias: Tensor | None, right: bool, what: str
) -> Tensor:
    """``F.linear(x, W, b)`` (or ``x W + b``) for every member: the shared base product once, plus each
    member's rank-r term (for member-major rows, written first and the GEMM accumulated into it). Nothing
    of size K·m·n is formed."""
    k = mode.info.size
    if x.dim() < 2:
        raise ValueError(
            f"population mode: {what} got a 1-D input of shape {tuple(x.shape)}: it needs a batch"
        )
    per = mode.rows_of(x, what)
    shared = per is None or x.stride(0) == 0  # one block of rows serves every member: no copy of x
    plan = product_noise(mode, weight, bias, right)
    if plan.a_t is not None and not shared:
        return _noise_then_product(x, weight, bias, plan, right)

    def base(inp: Tensor) -> Tensor:
        if right:
            return torch.matmul(inp, weight) if bias is None else torch.matmul(inp, weight).add_(bias)
        return F.linear(inp, weight, bias)

    if shared:
        total = mode.shared_rows() if per is None else x.shape[0]
        y = base(x[:1]).expand(total, *([-1] * (x.dim() - 1))).contiguous()  # (R, ..., out)
    else:
        y = base(x)
        y = y if y.is_contiguous() else y.contiguous()
    g, s, out = plan.groups, plan.mirrors, y.shape[-1]
    rows = y.numel() // (k * out)  # per member
    y4 = y.view(g, s, rows, out)  # member j·S + t at (j, t)
    n = x.shape[-1]
    # Many rows per member (tokens of a sequence): the bias noise rides along in the same batched product,
    # [x B | s] @ [α Aᵀ ; σ_b β] — one pass over y instead of three. One row per member: addcmul is faster.
    fused = plan.a_t is not None and plan.beta is not None and rows >= _FUSE_BIAS_ROWS
    if plan.a_t is not None:
        if shared:
            x_block = x[:1].expand(rows // math.prod(x.shape[1:-1]), *x.shape[1:]).reshape(rows, n)
            xb = _shared_x_times_b(x_block, plan.b)  # (G, rows, r): one x B per group
            if fused:  # [α x B | σ_b] (G, rows, r + 1), against [Aᵀ ; β]
                xb = torch.cat([xb * plan.alpha, xb.new_full((g, rows, 1), plan.sigma_b)], dim=-1)
            for t in range(s):  # both mirrors see the same x: the second takes -α
                sign = -1.0 if t else 1.0
                if fused:
                    y4[:, t].baddbmm_(xb, _stacked_factors(plan), alpha=sign)
                else:
                    _outer_add(y4[:, t], xb, plan.a_t, sign * plan.alpha)
    elif plan.eps_t is not None:
        x4 = x[:1].reshape(1, 1, -1, n).expand(g, s, rows, n) if shared else x.reshape(g, s, rows, n)
        for t in range(s):
            xs = x4[:, t] if plan.signs is None else x4[:, t] * plan.signs.to(x.dtype).view(-1, 1, 1)
            y4[:, t].baddbmm_(xs, plan.eps_t, alpha=-plan.alpha if t else plan.alpha)
    if not fused:
        _add_bias_noise(y4, plan)
    return y


def _noise_then_product(
    x: Tensor, weight: Tensor, bias: Tensor | None, plan: ProductNoise, right: bool
) -> Tensor:
    """Member-major x (K·b rows): each member's own terms are written first,

        out_i = b + σ s_i (x_i B) Aᵀ/√r + σ_b s_i β,

    and the shared product is then accumulated into them by the GEMM itself (``addmm_``, β = 1). The
    output is written by one op and updated by one GEMM — where ``F.linear`` followed by in-place noise
    terms would copy b into it, run the GEMM, then pass over it twice more."""
    g, s = plan.groups, plan.mirrors
    n, m = x.shape[-1], plan.a_t.shape[-1]
    flat = x if x.dim() == 2 else x.reshape(-1, n)  # (R, n)
    rows = flat.shape[0] // (g * s)  # per member
    xb = _x_times_b(flat.view(g, s * rows, n), plan.b)  # (G, S·rows, r): x_i B
    r = xb.shape[-1]
    xb.view(g, s, rows, r).mul_(_member_scales(s, plan.alpha, xb.dtype, xb.device))  # σ s_i (x_i B)/√r
    if plan.beta is not None and rows >= _FUSE_BIAS_ROWS:  # [x B | s] @ [α Aᵀ ; σ_b β]: one batched product
        signs = _member_scales(s, plan.sigma_b, xb.dtype, xb.device).expand(g, s, rows, 1)
        left = torch.cat([xb, signs.reshape(g, s * rows, 1)], dim=-1)  # (G, S·rows, r + 1)
        right_factor = _stacked_factors(plan)
        out = torch.bmm(left, right_factor) if bias is None else torch.baddbmm(bias, left, right_factor)
    else:
        member_bias, owned = _member_biases(plan, bias) if plan.beta is not None else (bias, False)
        if owned and rows == 1:  # a fresh (G, S, 1, out): the noise terms are added into it, in place
            out = member_bias
            _outer_add(out.view(g, s, m), xb, plan.a_t, 1.0)
        elif r == 1:  # rank 1: an outer product (CPU runs it faster than a batch of rank-1 GEMMs)
            a_t, xb4 = plan.a_t.unsqueeze(1), xb.view(g, s, rows, 1)  # (G, 1, 1, out), (G, S, rows, 1)
            out = torch.mul(xb4, a_t) if member_bias is None else torch.addcmul(member_bias, xb4, a_t)
        elif member_bias is None:
            out = torch.bmm(xb, plan.a_t)
        elif member_bias.dim() == 1 or rows == 1:  # (out,) or (G, S, 1, out) read as (G, S, out)
            bias_3d = member_bias if member_bias.dim() == 1 else member_bias.view(g, s, m)
            out = torch.baddbmm(bias_3d, xb, plan.a_t)
        else:
            out = torch.bmm(xb, plan.a_t)
            out.view(g, s, rows, m).add_(member_bias)
    y = out if out.dim() == 2 else out.view(-1, m)  # (R, out)
    y.addmm_(flat, weight if right else weight.t())
    return y if x.dim() == 2 else y.view(*x.shape[:-1], m)


def _x_times_b(x3: Tensor, b: Tensor) -> Tensor:
    """x_i B for every group: x3 (G, rows, n) @ b (G, n, r) -> (G, rows, r), a fresh tensor. From 8 rows on
    as (Bᵀ x_iᵀ)ᵀ: MKL's batched GEMM runs that orientation 2-2.5× faster for many rows (2 cores, r ≤ 4)
    and ~1.2× slower for one or two."""
    if x3.shape[1] < _TRANSPOSED_XB_ROWS:
        return torch.bmm(x3, b)
    return torch.bmm(b.transpose(1, 2), x3.transpose(1, 2)).transpose(1, 2)


#: Rows per member from which ``_x_times_b`` takes the (Bᵀ x_iᵀ)ᵀ orientation.
_TRANSPOSED_XB_ROWS = 8


def _shared_x_times_b(x: Tensor, b: Tensor) -> Tensor:
    """x B_k for one block of rows x (rows, n) and every group's b (G, n, r) -> (G, rows, r), a strided
    view: one GEMM [B_1 … B_G]ᵀ xᵀ (2-8× faster on 2 cores than a batched product over an expanded x)."""
    g, n, r = b.shape
    return torch.mm(b.transpose(1, 2).reshape(g * r, n), x.t()).view(g, r, -1).transpose(1, 2)


@functools.lru_cache(maxsize=32)
def _member_scales(s: int, scale: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(1, S, 1, 1): +scale for a group's first mirror, −scale for the second (cached, never written: one
    in-place multiply by it costs a third of a scalar multiply followed by a negation)."""
    return torch.tensor([scale, -scale][:s], dtype=dtype, device=device).view(1, s, 1, 1)


def _member_biases(plan: ProductNoise, bias: Tensor) -> tuple[Tensor, bool]:
    """b + σ_b s_i β_i as (G, S, 1, out), and whether it is the caller's to write into.

    The first forward of a call gets a fresh one, which its noise terms are then added into in place (one
    buffer written and updated, no second one beside it: a one-forward fitness pays nothing more). The
    second builds the one kept for the call's later forwards (within a call a perturbed bias is read-only:
    the mode refuses in-place ops on it), up to ``_MEMBER_BIAS_VALUES`` values; a larger one (a wide layer of
    a large population) is built fresh by every forward instead."""
    if plan.member_bias is not None:
        return plan.member_bias, False
    g, out = plan.groups, plan.beta.shape[-1]
    beta = plan.beta.view(g, 1, 1, out)
    if plan.mirrors == 2:
        values = torch.addcmul(
            bias, beta, _member_scales(2, 1.0, beta.dtype, beta.device), value=plan.sigma_b
        )
    else:  # the sign is folded into β
        values = torch.add(bias, beta, alpha=plan.sigma_b)
    first, plan.built_bias = not plan.built_bias, True
    if first or values.numel() > _MEMBER_BIAS_VALUES:
        return values, True
    plan.member_bias = values
    return values, False


#: The largest members' bias (G·S·out values) a plan keeps between forwards: 16 MB in float32.
_MEMBER_BIAS_VALUES = 1 << 22


def _stacked_factors(plan: ProductNoise) -> Tensor:
    """[Aᵀ ; β]: (G, r + 1, out), cached in the plan (the scales ride on the left factor)."""
    if plan.stacked is None:
        plan.stacked = torch.cat([plan.a_t, plan.beta], dim=1)
    return plan.stacked


#: Rows per member from which the bias noise is fused into the low-rank product (measured on 2 cores:
#: 1.7× faster at 32 rows of width 1000, 2.7× slower at 1 row of width 256).
_FUSE_BIAS_ROWS = 8


def _add_bias_noise(y4: Tensor, plan: ProductNoise) -> None:
    """y_i += σ_b s_i β_k in place on y4 (G, S, rows, out); both mirrors in one pass (no-op without β)."""
    if plan.beta is None:
        return
    g, out = y4.shape[0], y4.shape[-1]
    if plan.mirrors == 2:
        y4.addcmul_(
            _member_scales(2, 1.0, y4.dtype, y4.device), plan.beta.view(g, 1, 1, out), value=plan.sigma_b
        )
    else:
        y4[:, 0].add_(plan.beta, alpha=plan.sigma_b)  # (G, 1, out): the sign is folded in


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
