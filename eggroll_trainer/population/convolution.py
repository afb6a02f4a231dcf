"""``F.conv1d``/``F.conv2d`` with a perturbed kernel W (out × in × k…), read as the matrix out × (in·k…):

    conv(x_i, W + σ s_i A_i B_iᵀ/√r) = conv(x_i, W) + σ s_i/√r · A_i conv(x_i, B̃_i),  B̃_i = B_iᵀ as (r, in, k…),

the shared convolution plus one depthwise convolution of every member to r channels and a 1×1 mix by A_i."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .fallback import vmap_fallback
from .members import is_activation, member_factors, member_values
from .mode import population_mode


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
    # conv(x_i, B̃_i) = Σ_c x_i[c] ⋆ B̃_i[:, c]: one depthwise convolution over all K·C channels (r filters
    # each), summed over c — CPU runs it several times faster than the equivalent K-group convolution.
    x_groups = x.reshape(k, per, *x.shape[1:]).transpose(0, 1).reshape(per, k * channels, *x.shape[2:])
    filters = (
        b_t.reshape(k, r, *weight.shape[1:]).transpose(1, 2).reshape(k * channels * r, 1, *weight.shape[2:])
    )
    z = func(x_groups, filters, None, groups=k * channels, **rest)  # (b, K·C·r, *S')
    z = z.reshape(per, k, channels, r, -1).sum(dim=2)  # (b, K, r, S')
    out = y.shape[1]
    y_members = y.view(k, per, out, -1)  # (K, b, out, S')
    if r == 1:  # the 1×1 mix is an outer product: added in place, no temporary
        y_members.addcmul_(a_t.view(k, 1, out, 1), z.transpose(0, 1))
    else:
        delta = torch.bmm(a_t.transpose(1, 2), z.permute(1, 2, 0, 3).reshape(k, r, -1))  # (K, out, b·S')
        y_members.add_(delta.view(k, out, per, -1).transpose(1, 2))
    if bias is not None and id(bias) in mode.perturbed:
        y_members.add_(member_values(mode, bias).view(k, 1, out, 1))  # (K, out): θ_b + σ s_i β_i
    return y
