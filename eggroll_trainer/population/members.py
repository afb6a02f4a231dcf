"""Each member's noise for one population-mode call: dense deltas and values, per-member factors, and the
G × S layout of a product's noise (views of the noise table for a regular slice), each built once per call
(``cache``)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .cache import MemberBiases, ProductKey, ProductNoise
from .mode import population_mode


def member_delta(mode: population_mode, param: Tensor) -> Tensor:
    """σ s_i E_i for every member: (K, *shape), dense (for 1-D parameters and elementwise uses)."""
    deltas = mode.cache.deltas
    if id(param) not in deltas:
        entry = mode.perturbed[id(param)]
        deltas[id(param)] = entry.noise.dense(*mode.slice.members).mul_(entry.sigma)
    return deltas[id(param)]


def member_values(mode: population_mode, t: Tensor) -> Tensor:
    """θ + σ s_i E_i for every member (K, *shape), of a perturbed parameter or of a view derived from one."""
    if id(t) in mode.derived:
        _, sources, fn, _ = mode.derived[id(t)]
        return fn(*(member_values(mode, source) for source in sources))
    mode.seen.add(id(t))
    return member_delta(mode, t) + t


def member_factors(mode: population_mode, param: Tensor) -> tuple[Tensor, Tensor]:
    """Per member Aᵀ (K, r, m) scaled by σ s_i/√r (padding rows zeroed) and Bᵀ (K, r, n): small copies."""
    factors = mode.cache.factors
    if id(param) not in factors:
        entry = mode.perturbed[id(param)]
        pairs, signs = mode.slice.members
        a_t, b_t = entry.noise.factors_t(0, mode.slice.pair_end)
        scale = signs.to(a_t.dtype).view(-1, 1, 1) * (entry.sigma / math.sqrt(entry.noise.spec.rank))
        factors[id(param)] = entry.noise.masked_a_t(a_t[pairs]) * scale, b_t[pairs]
    return factors[id(param)]


def name_of(func: Any) -> str:
    return getattr(func, "__name__", repr(func))


def in_place(func: Any) -> bool:
    """Whether ``func`` writes into its first argument (``add_``, ``__iadd__``, ...)."""
    name = name_of(func)
    return name in {"__iadd__", "__isub__", "__imul__", "__itruediv__"} or (
        name.endswith("_") and not name.endswith("__")
    )


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


def product_noise(
    mode: population_mode, key: ProductKey, weight: Tensor, bias: Tensor | None, right: bool
) -> ProductNoise:
    """The (cached) noise of product ``key``, ``x Wᵀ + b`` or (``right``) ``x W + b``, for this call:
    strided views of the noise table for a regular slice, small indexed copies otherwise. The first call also
    opens the product's ``MemberBiases`` in the call's cache."""
    products = mode.cache.products
    if key not in products:
        products[key] = _product_noise(mode, weight, bias, right)
        mode.cache.member_biases[key] = MemberBiases()
    return products[key]


def _product_noise(mode: population_mode, weight: Tensor, bias: Tensor | None, right: bool) -> ProductNoise:
    sl = mode.slice
    w_entry = mode.perturbed.get(id(weight))
    b_entry = mode.perturbed.get(id(bias)) if bias is not None else None
    signs = None if sl.paired or not sl.antithetic else sl.members[1]  # None: every sign is +1
    layout: dict[str, Any] = {}
    if w_entry is not None and w_entry.noise.spec.low_rank:
        a_t, b_t = w_entry.noise.factors_t(0, sl.pair_end)  # (P, r, m), (P, r, n) views
        a_t = sl.per_group(w_entry.noise.masked_a_t(a_t))
        b_t = sl.per_group(b_t)
        out_t, in_t = (b_t, a_t) if right else (a_t, b_t)
        layout["a_t"] = out_t if signs is None else out_t * signs.to(out_t.dtype).view(-1, 1, 1)
        layout["b"] = in_t.transpose(1, 2)  # (G, in, r), a transposed view
        layout["alpha"] = w_entry.sigma / math.sqrt(w_entry.noise.spec.rank)
        mode.seen.add(id(weight))
    elif w_entry is not None:  # full-rank weight noise (VanillaESTrainer)
        eps = sl.per_group(w_entry.noise.full(0, sl.pair_end))  # (G, m, n) view
        layout.update(eps_t=eps if right else eps.transpose(1, 2), signs=signs, alpha=w_entry.sigma)
        mode.seen.add(id(weight))
    if b_entry is not None:
        beta = sl.per_group(b_entry.noise.full(0, sl.pair_end))  # (G, out)
        if signs is not None:
            beta = beta * signs.to(beta.dtype).view(-1, 1)
        layout.update(beta=beta.unsqueeze(1), sigma_b=b_entry.sigma)
        mode.seen.add(id(bias))
    return ProductNoise(
        groups=sl.size // 2 if sl.paired else sl.size, mirrors=2 if sl.paired else 1, **layout
    )
