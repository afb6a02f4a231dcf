"""The CPU fast paths of a product with low-rank weight noise: named switches, one rule that sets them.

Each switch is a way to compute the reference product (``product_reference``) faster on a CPU; any
combination gives the reference's values up to float rounding (``tests/test_product_variants.py`` checks
every combination, by hypothesis, against it). :func:`choose_variant` is the only place that decides.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .cache import MemberBiases, ProductNoise
from .product_reference import add_bias_noise, member_scales, reference_product, shared_block, shared_output


@dataclass(frozen=True)
class Variant:
    """How a product with low-rank weight noise is computed; all ``False`` is the reference.

    Member-major rows (every member its own rows):

    * ``noise_first`` — each member's terms b + σ s_i (x_i B) Aᵀ/√r + σ_b s_i β are written first and the
      shared product is accumulated into them by the GEMM itself (``addmm_``, β = 1): the output is written
      by one op and updated by one GEMM, where ``F.linear`` followed by the noise terms would copy b into it,
      run the GEMM and pass over it twice more. The switches below refine it.
    * ``transposed_xb`` — each group's x B as (Bᵀ xᵀ)ᵀ, the orientation MKL's batched GEMM runs 2–2.5×
      faster for many rows (r ≤ 4) and ~1.2× slower for one or two.
    * ``keep_member_bias`` — b + σ_b s_i β kept for the call's later forwards (``cache.MemberBiases``).

    A shared block of rows (every member sees the same rows):

    * ``shared_gemm`` — x B_j of every group by one GEMM [B_1 … B_G]ᵀ xᵀ, 2–8× faster than a batched
      product over the expanded block.

    Both:

    * ``fused_bias`` — the bias noise rides in the rank-r product, [x B | s] @ [α Aᵀ ; σ_b β]: one pass
      over y instead of three (1.7× faster at 32 rows of width 1000, 2.7× slower at 1 row of width 256).
    * ``rank1_outer`` — at rank 1 the rank-r term as an elementwise outer product (``addcmul``), which a
      CPU runs faster than a batch of rank-1 GEMMs.

    (Figures: 2 cores, float32, measured when each path was added.)
    """

    noise_first: bool = False
    transposed_xb: bool = False
    keep_member_bias: bool = False
    shared_gemm: bool = False
    fused_bias: bool = False
    rank1_outer: bool = False


REFERENCE = Variant()

#: Rows per member from which the bias noise is fused into the rank-r product (``fused_bias``).
FUSE_BIAS_ROWS = 8
#: Rows per group (S mirrors × rows per member) from which x B takes the transposed orientation.
TRANSPOSED_XB_ROWS = 8
#: The largest members' bias (G·S·out values) a call keeps between forwards (``keep_member_bias``): 16 MB
#: in float32; a larger one (a wide layer of a large population) is built by every forward instead.
MEMBER_BIAS_VALUES = 1 << 22


def choose_variant(noise: ProductNoise, *, cpu: bool, shared: bool, rows: int) -> Variant:
    """The rule: which variant computes a product of this call.

    The reference off the CPU (not measured here: the formulation a GPU batches well), and for full-rank
    weight noise (no variant). On a CPU, each fast path where its measurement favours it:

    * ``noise_first`` for member-major rows, ``shared_gemm`` for a shared block, ``rank1_outer`` at rank 1;
    * ``fused_bias`` (with bias noise) and ``transposed_xb`` from 8 rows per member (``FUSE_BIAS_ROWS``)
      and 8 rows per group (``TRANSPOSED_XB_ROWS``; a group holds S rows-per-member of mirrors);
    * ``keep_member_bias`` up to ``MEMBER_BIAS_VALUES`` values of the members' bias.

    Args:
        noise: the product's noise for this call (rank, bias noise, layout).
        cpu: the product runs on a CPU (``x.is_cpu``).
        shared: every member sees the same block of rows.
        rows: rows per member (tokens of a sequence included).
    """
    if not cpu or noise.a_t is None:
        return REFERENCE
    return _cpu_variant(
        shared, rows, noise.mirrors, noise.rank, noise.beta is not None, noise.member_bias_values
    )


@functools.lru_cache(maxsize=256)
def _cpu_variant(
    shared: bool, rows: int, mirrors: int, rank: int, bias_noise: bool, members_bias: int
) -> Variant:
    """``choose_variant`` on a CPU, cached (every layer of every forward asks)."""
    return Variant(
        noise_first=not shared,
        transposed_xb=mirrors * rows >= TRANSPOSED_XB_ROWS,
        keep_member_bias=members_bias <= MEMBER_BIAS_VALUES,
        shared_gemm=shared,
        fused_bias=bias_noise and rows >= FUSE_BIAS_ROWS,
        rank1_outer=rank == 1,
    )


def variant_product(
    variant: Variant,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    noise: ProductNoise,
    right: bool,
    shared_rows: int | None,
    biases: MemberBiases,
) -> Tensor:
    """The product (as ``reference_product``, whose arguments these are) computed by ``variant``;
    ``biases`` is this product's per-call cache of the members' biases."""
    if noise.a_t is not None and shared_rows is None and variant.noise_first:
        return _noise_first(variant, x, weight, bias, noise, right, biases)
    if noise.a_t is not None and shared_rows is not None and variant.shared_gemm:
        return _shared_gemm(variant, x, weight, bias, noise, right, shared_rows)
    return reference_product(x, weight, bias, noise, right, shared_rows)


def _shared_gemm(
    variant: Variant,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    noise: ProductNoise,
    right: bool,
    total: int,
) -> Tensor:
    y = shared_output(x, weight, bias, right, total)  # (R, ..., out)
    g, s, out = noise.groups, noise.mirrors, y.shape[-1]
    rows = y.numel() // (g * s * out)  # per member
    y4 = y.view(g, s, rows, out)
    b = noise.b
    r = b.shape[-1]
    xb = (
        torch.mm(b.transpose(1, 2).reshape(g * r, -1), shared_block(x, rows).t())
        .view(g, r, -1)
        .transpose(1, 2)
    )
    fused = variant.fused_bias and noise.beta is not None
    if fused:  # [α x B | σ_b] (G, rows, r + 1), against [Aᵀ ; β]
        xb = torch.cat([xb * noise.alpha, xb.new_full((g, rows, 1), noise.sigma_b)], dim=-1)
    for t in range(s):  # both mirrors see the same x: the second takes −α
        sign = -1.0 if t else 1.0
        if fused:
            y4[:, t].baddbmm_(xb, noise.stacked, alpha=sign)
        else:
            _outer_add(y4[:, t], xb, noise.a_t, sign * noise.alpha, variant.rank1_outer)
    if not fused:
        add_bias_noise(y4, noise)
    return y


def _noise_first(
    variant: Variant,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    noise: ProductNoise,
    right: bool,
    biases: MemberBiases,
) -> Tensor:
    """out_i = b + σ s_i (x_i B) Aᵀ/√r + σ_b s_i β written first, then ``out += x Wᵀ`` by ``addmm_``."""
    g, s, a_t = noise.groups, noise.mirrors, noise.a_t
    n, m = x.shape[-1], a_t.shape[-1]
    flat = x if x.dim() == 2 else x.reshape(-1, n)  # (R, n)
    rows = flat.shape[0] // (g * s)  # per member
    x3 = flat.view(g, s * rows, n)
    if variant.transposed_xb:  # (Bᵀ x_iᵀ)ᵀ, a fresh tensor
        xb = torch.bmm(noise.b.transpose(1, 2), x3.transpose(1, 2)).transpose(1, 2)
    else:
        xb = torch.bmm(x3, noise.b)  # (G, S·rows, r): x_i B
    r = xb.shape[-1]
    xb.view(g, s, rows, r).mul_(member_scales(s, noise.alpha, xb.dtype, xb.device))  # σ s_i (x_i B)/√r
    if noise.beta is not None and variant.fused_bias:  # [x B | s] @ [α Aᵀ ; σ_b β]: one batched product
        signs = member_scales(s, noise.sigma_b, xb.dtype, xb.device).expand(g, s, rows, 1)
        left = torch.cat([xb, signs.reshape(g, s * rows, 1)], dim=-1)  # (G, S·rows, r + 1)
        out = torch.bmm(left, noise.stacked) if bias is None else torch.baddbmm(bias, left, noise.stacked)
    else:
        member_bias, owned = (bias, False)
        if noise.beta is not None:
            member_bias, owned = _member_biases(noise, bias, biases, variant.keep_member_bias)
        if owned and rows == 1:  # a fresh (G, S, 1, out): the noise terms are added into it, in place
            out = member_bias
            _outer_add(out.view(g, s, m), xb, a_t, 1.0, variant.rank1_outer)
        elif r == 1 and variant.rank1_outer:
            a_t4, xb4 = a_t.unsqueeze(1), xb.view(g, s, rows, 1)  # (G, 1, 1, out), (G, S, rows, 1)
            out = torch.mul(xb4, a_t4) if member_bias is None else torch.addcmul(member_bias, xb4, a_t4)
        elif member_bias is None:
            out = torch.bmm(xb, a_t)
        elif member_bias.dim() == 1 or rows == 1:  # (out,) or (G, S, 1, out) read as (G, S, out)
            bias_3d = member_bias if member_bias.dim() == 1 else member_bias.view(g, s, m)
            out = torch.baddbmm(bias_3d, xb, a_t)
        else:
            out = torch.bmm(xb, a_t)
            out.view(g, s, rows, m).add_(member_bias)
    y = out if out.dim() == 2 else out.view(-1, m)  # (R, out)
    y.addmm_(flat, weight if right else weight.t())
    return y if x.dim() == 2 else y.view(*x.shape[:-1], m)


def _member_biases(noise: ProductNoise, bias: Tensor, cache: MemberBiases, keep: bool) -> tuple[Tensor, bool]:
    """b + σ_b s_i β_j as (G, S, 1, out), and whether it is the caller's to write into (see ``MemberBiases``)."""
    if cache.kept is not None:
        return cache.kept, False
    g, out = noise.groups, noise.beta.shape[-1]
    beta = noise.beta.view(g, 1, 1, out)
    if noise.mirrors == 2:
        scales = member_scales(2, 1.0, beta.dtype, beta.device)
        values = torch.addcmul(bias, beta, scales, value=noise.sigma_b)
    else:  # the sign is folded into β
        values = torch.add(bias, beta, alpha=noise.sigma_b)
    cache.built += 1
    if cache.built == 1 or not keep:
        return values, True
    cache.kept = values
    return values, False


def _outer_add(y: Tensor, xb: Tensor, a_t: Tensor, alpha: float, rank1_outer: bool) -> None:
    """y (G, rows, out) += α · xb (G, rows, r) @ a_t (G, r, out)."""
    if rank1_outer and a_t.shape[1] == 1:
        y.addcmul_(xb, a_t, value=alpha)
    else:
        y.baddbmm_(xb, a_t, alpha=alpha)
