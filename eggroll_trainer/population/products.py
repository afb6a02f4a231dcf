"""Products with a perturbed weight: shared base product + each member's rank-r term.

Shapes: K members in this call, b rows per member (so the batch holds R = K·b rows), r the rank, G groups
of S mirrors (S = 2 when a call holds both members of every antithetic pair, else 1).

``product`` is the entry of the first two; ``product_reference`` computes them as written (the shared GEMM,
then a batched rank-r term), ``product_variants`` holds the CPU fast paths and the one rule that picks them.

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

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import ProductKey
from .fallback import vmap_fallback
from .members import is_activation, is_member_valued, product_noise
from .mode import population_mode
from .product_variants import choose_variant, variant_product


def product(
    mode: population_mode, x: Tensor, weight: Tensor, bias: Tensor | None, right: bool, what: str
) -> Tensor:
    """``F.linear(x, W, b)`` (or ``x W + b``) for every member: the shared base product once, plus each
    member's rank-r term (``product_reference``), computed by the variant ``choose_variant`` picks for it
    (``product_variants``). Nothing of size K·m·n is formed."""
    if x.dim() < 2:
        raise ValueError(
            f"population mode: {what} got a 1-D input of shape {tuple(x.shape)}: it needs a batch"
        )
    per = mode.rows_of(x, what)
    shared = per is None or x.stride(0) == 0  # one block of rows serves every member: no copy of x
    shared_rows = (mode.shared_rows() if per is None else x.shape[0]) if shared else None
    key: ProductKey = (id(weight), None if bias is None else id(bias), right)
    noise = product_noise(mode, key, weight, bias, right)
    batch = shared_rows or x.shape[0]
    rows = (batch if x.dim() == 2 else batch * math.prod(x.shape[1:-1])) // mode.info.size  # per member
    variant = choose_variant(noise, cpu=x.is_cpu, shared=shared, rows=rows)
    biases = mode.cache.member_biases[key]
    return variant_product(variant, x, weight, bias, noise, right, shared_rows, biases)


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
