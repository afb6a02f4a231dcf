"""``nn.MultiheadAttention`` in population mode.

``nn.MultiheadAttention`` hands ``in_proj_weight`` and ``out_proj.weight`` straight to
``F.multi_head_attention_forward`` (a hook on ``out_proj`` never fires), so population mode computes that
function itself: the in- and out-projections through the low-rank product of ``population_ops`` (shared
base GEMM + rank-r term per member), the attention per row as usual (members never mix: each row is one
member's sequence).

Inputs arrive sequence-first, (L, B, E), whatever ``batch_first`` says (the module transposes for us).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .elementwise import with_member_values
from .members import is_member_valued
from .mode import population_mode
from .products import product


def _project(
    mode: population_mode,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    rows: slice = slice(None),
    packed: bool = True,
) -> Tensor:
    """x (B, L, E_in) → x W_rowsᵀ + b_rows with each member's perturbation of W and b.

    ``rows`` picks q's, k's or v's block of the packed (3E,) bias and — when ``packed`` — of the packed
    (3E, E) weight's output; a separate q/k/v weight (kdim/vdim ≠ embed_dim) is used whole."""
    what = f"the attention projection {mode.name(weight)}"
    if rows == slice(None) and (is_member_valued(mode, weight) or is_member_valued(mode, bias)):
        return product(mode, x, weight, bias, right=False, what=what)  # bias noise added in place
    y = (
        product(mode, x, weight, None, right=False, what=what)
        if is_member_valued(mode, weight)
        else F.linear(x, weight)
    )
    if packed:
        y = y[..., rows]
    if bias is None:
        return y
    if is_member_valued(mode, bias):
        return with_member_values(mode, lambda h, b: h + b[..., rows], y, bias, param_first=False)
    return y + bias[rows]


def _additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """torch's convention (True = masked out) as an additive float mask."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


def multi_head_attention(
    mode: population_mode,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    training: bool = True,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    static_k: Tensor | None = None,
    static_v: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` for every member; the same arguments and results."""
    where = mode.name(in_proj_weight if in_proj_weight is not None else out_proj_weight)
    if (
        bias_k is not None
        or bias_v is not None
        or add_zero_attn
        or static_k is not None
        or static_v is not None
    ):
        raise ValueError(
            f"population mode: MultiheadAttention ({where}) with add_bias_kv, add_zero_attn or static keys is "
            "not supported; use sequential evaluation (batched=False)"
        )
    if query.dim() != 3:
        raise ValueError(
            f"population mode: MultiheadAttention ({where}) needs batched inputs, got {tuple(query.shape)}"
        )
    e, h = embed_dim_to_check, num_heads
    q_in, k_in, v_in = (t.transpose(0, 1) for t in (query, key, value))  # (B, L, E), (B, S, ·)
    if not use_separate_proj_weight:
        assert in_proj_weight is not None
        if query is key and key is value:  # self-attention: one product for q, k and v
            q, k, v = _project(mode, q_in, in_proj_weight, in_proj_bias, slice(None)).chunk(3, dim=-1)
        else:  # each input takes its block of the packed projection (3× the product: cross-attention)
            q, k, v = (_project(mode, t, in_proj_weight, in_proj_bias, slice(i * e, (i + 1) * e))
                       for i, t in enumerate((q_in, k_in, v_in)))  # fmt: skip
    else:
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
        q, k, v = (_project(mode, t, w, in_proj_bias, slice(i * e, (i + 1) * e), packed=False)
                   for i, (t, w) in enumerate(zip((q_in, k_in, v_in), weights)))  # fmt: skip
    b, length, source = q.shape[0], q.shape[1], k.shape[1]
    q, k, v = (t.reshape(b, -1, h, e // h).transpose(1, 2) for t in (q, k, v))  # (B, H, L|S, E/H)

    mask = _additive_mask(attn_mask, q.dtype)
    if mask is not None:
        mask = mask.view(1, 1, length, source) if mask.dim() == 2 else mask.view(b, h, length, source)
    if key_padding_mask is not None:
        padding = _additive_mask(key_padding_mask, q.dtype).view(b, 1, 1, source)
        mask = padding if mask is None else mask + padding
    causal = is_causal and mask is None
    p = dropout_p if training else 0.0
    if need_weights:
        scores = q @ k.transpose(-2, -1) / math.sqrt(e // h)  # (B, H, L, S)
        if causal:
            scores = scores.masked_fill(
                torch.ones(length, source, dtype=torch.bool, device=scores.device).triu(1), float("-inf")
            )
        if mask is not None:
            scores = scores + mask
        attn = scores.softmax(dim=-1)
        out = F.dropout(attn, p) @ v if p > 0 else attn @ v
        weights_out: Tensor | None = attn.mean(dim=1) if average_attn_weights else attn
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        weights_out = None
    out = out.transpose(1, 2).reshape(b, length, e)  # (B, L, E)
    out = _project(mode, out, out_proj_weight, out_proj_bias, slice(None))
    return out.transpose(0, 1), weights_out  # (L, B, E)


__all__ = ["multi_head_attention"]
