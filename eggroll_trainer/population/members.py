"""Each member's noise for one population-mode call: dense deltas and values, per-member factors, and the
G × S layout of a product's noise (views of the noise table for a regular slice)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .mode import population_mode


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
        _, sources, fn, _ = mode.derived[id(t)]
        return fn(*(member_values(mode, source) for source in sources))
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
    # built for the call's later forwards (``products``):
    member_bias: Tensor | None = None  # (G, S, 1, out): b + σ_b s_i β, kept from the second forward on
    built_bias: bool = False  # a forward of this call built the members' bias (the first writes into it)
    stacked: Tensor | None = None  # (G, r + 1, out): [Aᵀ ; β]


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
