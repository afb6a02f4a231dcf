"""What one population-mode call computes once and reuses: typed caches, and the noise layouts they hold.

A call's forwards (an RL rollout runs one per environment step) all see the same members, so each perturbed
parameter's per-member noise is gathered once per call. Nothing here outlives the call.

Layout of a product's noise: K members in the call, laid out as G groups of S mirrors (S = 2 when the call holds
both members of every antithetic pair, one product per pair serving both; else S = 1 with the sign folded in).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class ProductNoise:
    """One weight's (and bias's) noise for the members of a call, laid out G × S: what member j·S + t adds to
    ``x Wᵀ + b`` is ``α s_t (x B_j) A_jᵀ + σ_b s_t β_j`` (low rank; α = σ/√r) or ``α s_t x ε_j + σ_b s_t β_j``
    (full rank; ε_j = ``eps_t[j]``, α = σ), with s_0 = +1, s_1 = −1. Fixed for the call, whatever its forwards do."""

    groups: int  # G
    mirrors: int  # S ∈ {1, 2}
    a_t: Tensor | None = None  # (G, r, out): the output-side factor (sign folded in when S = 1)
    b: Tensor | None = None  # (G, in, r): the input-side factor
    eps_t: Tensor | None = None  # (G, in, out): full-rank weight noise as it multiplies x
    signs: Tensor | None = None  # (G,) signs for ``eps_t`` when S = 1 (None: all +1)
    alpha: float = 0.0  # σ/√r (low rank) or σ (full rank)
    beta: Tensor | None = None  # (G, 1, out): bias noise (sign folded in when S = 1)
    sigma_b: float = 0.0

    @functools.cached_property
    def rank(self) -> int:
        """r of the low-rank weight noise (0: none)."""
        return 0 if self.a_t is None else self.a_t.shape[1]

    @functools.cached_property
    def member_bias_values(self) -> int:
        """G·S·out: the values of the members' biases b + σ_b s_i β (0 without weight noise)."""
        return 0 if self.a_t is None else self.groups * self.mirrors * self.a_t.shape[-1]

    @functools.cached_property
    def stacked(self) -> Tensor:
        """[Aᵀ ; β]: (G, r + 1, out), the right factor of the fused bias product (built on first use)."""
        return torch.cat([self.a_t, self.beta], dim=1)


@dataclass
class MemberBiases:
    """The members' biases b + σ_b s_i β_i, (G, S, 1, out), of one product over the forwards of a call.

    The first forward builds them into a buffer of its own (its noise terms then go into it in place: a
    fitness of one forward pays for one buffer). The second builds the one the call keeps, read-only (the
    mode refuses in-place ops on a perturbed bias), and every later forward reuses it — unless the variant
    says not to keep one (too large), in which case every forward builds its own."""

    built: int = 0  # forwards that built them
    kept: Tensor | None = None


#: A product of a call: (id(W), id(b) or None, right) for ``x Wᵀ + b`` (``right=False``) or ``x W + b``
#: (a plain tuple: it is built for every product of every forward).
ProductKey = tuple[int, "int | None", bool]


@dataclass
class CallCache:
    """Per call, keyed by parameter identity (a tied parameter is one entry)."""

    deltas: dict[int, Tensor] = field(default_factory=dict)  # σ s_i E_i, (K, *shape)
    # Aᵀ (K, r, m) scaled by σ s_i/√r, Bᵀ (K, r, n)
    factors: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    products: dict[ProductKey, ProductNoise] = field(default_factory=dict)
    member_biases: dict[ProductKey, MemberBiases] = field(default_factory=dict)
    expert_stacks: set[int] = field(default_factory=set)  # 3-D (E, out, in) stacks a module holds directly
    routings: dict[int, Any] = field(default_factory=dict)  # stack -> its module's last ``experts.Routing``
