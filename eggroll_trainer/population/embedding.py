"""``F.embedding`` with a perturbed table P (V × d): y_i = P[ids_i] + σ s_i A[ids_i] Bᵀ/√r — the shared lookup
plus, per token, a gather of the r numbers A[id] and a rank-r product with Bᵀ (nothing of size K·V·d)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .fallback import vmap_fallback
from .members import member_factors
from .mode import population_mode


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
