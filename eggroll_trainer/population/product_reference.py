r"""The reference product: what every member's ``F.linear`` (or ``x W + b``) computes, the plain way.

Member i = j·S + t of a call (group j, mirror t, sign $s_t$; see ``cache.ProductNoise``) with rows $x_i$ gets

$$y_i = x_i W^\top + b \;+\; \alpha\, s_t\, (x_i B_j) A_j^\top \;+\; \sigma_b\, s_t\, \beta_j,
\qquad \alpha = \sigma/\sqrt r,$$

(with $\alpha s_t\, x_i \varepsilon_j$ for full-rank weight noise). The reference computes it as written: the
shared GEMM over all K·b rows (once, when every member sees the same block of rows), then each mirror's
rank-r term as a batched product over the G groups, then the bias noise. Nothing of size K·m·n is formed.
This is the formulation a GPU batches well; the CPU fast paths of ``product_variants`` are checked against it.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import ProductNoise


def reference_product(
    x: Tensor, weight: Tensor, bias: Tensor | None, noise: ProductNoise, right: bool, shared_rows: int | None
) -> Tensor:
    """Every member's ``x_i Wᵀ + b`` (``right``: ``x_i W + b``) plus its noise terms, (R, …, out).

    Args:
        x: (R, …, in) member-major rows (R = K·b), or, with ``shared_rows``, one block every member sees.
        shared_rows: None for member-major ``x``; else the output's R (K·b) for a shared ``x``.
    """
    y = (
        base_product(x, weight, bias, right)
        if shared_rows is None
        else shared_output(x, weight, bias, right, shared_rows)
    )
    g, s, out = noise.groups, noise.mirrors, y.shape[-1]
    rows = y.numel() // (g * s * out)  # per member
    y4 = y.view(g, s, rows, out)  # member j·S + t at (j, t)
    if noise.a_t is not None or noise.eps_t is not None:
        n = x.shape[-1]
        x4 = x.reshape(g, s, rows, n) if shared_rows is None else shared_block(x, rows).expand(g, s, rows, n)
        for t in range(s):  # the second mirror takes −α
            sign, xs = (-1.0 if t else 1.0), x4[:, t]  # (G, rows, in)
            if noise.a_t is not None:
                y4[:, t].baddbmm_(torch.bmm(xs, noise.b), noise.a_t, alpha=sign * noise.alpha)
            else:
                xs = xs if noise.signs is None else xs * noise.signs.to(x.dtype).view(-1, 1, 1)
                y4[:, t].baddbmm_(xs, noise.eps_t, alpha=sign * noise.alpha)
    add_bias_noise(y4, noise)
    return y


def base_product(x: Tensor, weight: Tensor, bias: Tensor | None, right: bool) -> Tensor:
    """The unperturbed ``x Wᵀ + b`` (``right``: ``x W + b``), contiguous."""
    if right:
        y = torch.matmul(x, weight) if bias is None else torch.matmul(x, weight).add_(bias)
    else:
        y = F.linear(x, weight, bias)
    return y if y.is_contiguous() else y.contiguous()


def shared_output(x: Tensor, weight: Tensor, bias: Tensor | None, right: bool, total: int) -> Tensor:
    """The base product of a shared block of rows, computed once and spread to ``total`` rows: (total, …, out)."""
    return base_product(x[:1], weight, bias, right).expand(total, *([-1] * (x.dim() - 1))).contiguous()


def shared_block(x: Tensor, rows: int) -> Tensor:
    """The rows one member sees of a shared ``x``, flattened: (rows, in) (a view where the rows allow)."""
    return x[:1].expand(rows // math.prod(x.shape[1:-1]), *x.shape[1:]).reshape(rows, x.shape[-1])


@functools.lru_cache(maxsize=32)
def member_scales(s: int, scale: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(1, S, 1, 1): +scale for a group's first mirror, −scale for the second (cached, never written: one
    in-place multiply by it costs a third of a scalar multiply followed by a negation)."""
    return torch.tensor([scale, -scale][:s], dtype=dtype, device=device).view(1, s, 1, 1)


def add_bias_noise(y4: Tensor, noise: ProductNoise) -> None:
    """y_i += σ_b s_i β_j in place on y4 (G, S, rows, out); both mirrors in one pass (no-op without β)."""
    if noise.beta is None:
        return
    g, out = y4.shape[0], y4.shape[-1]
    if noise.mirrors == 2:
        scales = member_scales(2, 1.0, y4.dtype, y4.device)
        y4.addcmul_(scales, noise.beta.view(g, 1, 1, out), value=noise.sigma_b)
    else:
        y4[:, 0].add_(noise.beta, alpha=noise.sigma_b)  # (G, 1, out): the sign is folded in
