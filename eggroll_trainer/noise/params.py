"""Keyed Gaussian noise from a shared table — regenerated on demand, never stored per member.

Every perturbation is a *view* into one block of i.i.d. N(0, 1) values (the OpenAI-ES "shared noise
table", [`eggroll_trainer.noise.table`][eggroll_trainer.noise.table]), made once from the seed. Member noise is
addressed by a key:

    (seed, parameter index j, noise epoch e, pair index k)  ->  table[base(seed, j, e) + k * stride_j :]

where ``base`` is a 64-bit hash of ``(seed, j, e)`` and ``e = generation // noise_reuse``. Members 2k and
2k+1 of an antithetic population read the same slice with signs +1 and -1.

Because a parameter's pairs sit at a constant stride, the factors of a whole population are one strided
view — ``(P, m, r)`` without a copy — which is what lets the batched forward and the update GEMM run
without ever drawing or materialising noise. The update, ``get_best_model()``, a resumed run and every
distributed rank regenerate exactly the same numbers from the key.

A low-rank slice of length ``(m + n) * r`` holds ``Aᵀ`` (r×m) then ``Bᵀ`` (r×n), each row-major — so every
factor column is a contiguous run of the table, which is the layout the batched ``bmm`` and the update GEMM
read fastest (and for r = 1 it is simply ``A`` then ``B``); a full-rank slice holds ``ε`` in the parameter's
shape.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: Above this many factor values per update chunk, the update GEMM runs per factor column (no stacked copy).
_STACKED_UPDATE_VALUES = 1 << 16


def member_pairs(start: int, count: int, antithetic: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pair index and sign of members ``start .. start+count-1``.

    Antithetic: member i uses pair i // 2 with sign +1 (even i) or -1 (odd i). Otherwise pair i, sign +1.
    """
    members = torch.arange(start, start + count, device=device)
    if not antithetic:
        return members, torch.ones(count, device=device)
    signs = 1.0 - 2.0 * (members % 2).to(torch.get_default_dtype())
    return members // 2, signs


def num_pairs(population_size: int, antithetic: bool) -> int:
    """Distinct noise draws per generation: ceil(N / 2) with antithetic pairs, N without."""
    return (population_size + 1) // 2 if antithetic else population_size


@dataclass(frozen=True)
class NoiseSpec:
    """How one parameter is perturbed: ``rank`` r ≥ 1 for low-rank ``A Bᵀ/√r``, ``None`` for full rank.

    A low-rank tensor of more than two dimensions (a convolution kernel (out, in, kh, kw)) is read as the
    matrix ``shape[0] × prod(shape[1:])`` — unless ``experts``: a mixture-of-experts stack (E, m, n) is a batch
    of E matrices, each with its own ``A_e B_eᵀ/√r`` (A (E, m, r), B (E, n, r)). ``zero_rows`` lists rows that
    are never perturbed nor updated (an ``nn.Embedding``'s ``padding_idx``)."""

    shape: torch.Size
    rank: int | None
    zero_rows: tuple[int, ...] = ()
    experts: bool = False

    def __post_init__(self) -> None:
        if self.rank is not None and len(self.shape) < 2:
            raise ValueError(
                f"low-rank noise needs a tensor of 2 or more dimensions, got shape {tuple(self.shape)}"
            )
        if self.experts and (self.rank is None or len(self.shape) != 3):
            raise ValueError(
                f"expert noise needs low rank and a (E, m, n) tensor, got shape {tuple(self.shape)}"
            )

    @property
    def num_experts(self) -> int:
        """E for an expert stack, 1 for a single matrix."""
        return int(self.shape[0]) if self.experts else 1

    @property
    def low_rank(self) -> bool:
        return self.rank is not None

    @functools.cached_property
    def matrix_shape(self) -> tuple[int, int]:
        """(m, n): the matrix a low-rank perturbation lives in (``shape[0] × prod(shape[1:])``; one expert's
        ``shape[1] × shape[2]`` for an expert stack)."""
        if self.experts:
            return int(self.shape[1]), int(self.shape[2])
        return int(self.shape[0]), math.prod(self.shape[1:])

    @functools.cached_property
    def length(self) -> int:
        """Table values one member's noise occupies: E·(m + n)·r for low rank (E = 1 but for an expert stack),
        numel for full rank."""
        if self.rank is not None:
            m, n = self.matrix_shape
            return self.num_experts * (m + n) * self.rank
        return math.prod(self.shape)


class ParamNoise:
    """The noise of one parameter tensor in one noise epoch, for all pairs, as views of the table."""

    def __init__(
        self, table: Tensor, spec: NoiseSpec, key: int, pairs: int, absmax: float | None = None
    ) -> None:
        self.table = table
        self.spec = spec
        self.absmax = absmax  # max |table value| if known (``table_absmax``): bounds every entry of E
        self._factor_views: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        size = table.numel()
        length = spec.length
        # A parameter's windows span at most half the table, so its start (hashed over the other half or
        # more) lands far from other parameters': were every span the whole table, all starts would be ~0
        # and parameters with equal slice lengths would read the *same* values for every member — a
        # biased estimate (benchmarks/noise_table.py). Overlap between one parameter's members is harmless.
        half = size // 2
        if pairs * length <= half:
            self.stride = length  # disjoint windows: independent noise within a generation
        else:  # overlapping, shifted windows (OpenAI-ES style)
            self.stride = max(1, (half - length) // max(pairs - 1, 1))
        span = (pairs - 1) * self.stride + length
        if span > size:
            raise ValueError(
                f"noise_table_size={size} is too small for a parameter of shape "
                f"{tuple(spec.shape)} at {pairs} pairs (needs at least {length + pairs - 1})"
            )
        self.base = key % (size - span + 1)

    @property
    def entry_bound(self) -> float | None:
        """A bound on |entry| of every E_k: M for full rank, √r·M² for (1/√r) Σ_c a_c b_cᵀ (M = ``absmax``)."""
        if self.absmax is None:
            return None
        m = max(self.absmax, 1.0)
        return math.sqrt(self.spec.rank) * m * m if self.spec.low_rank else m

    def _window(self, first: int, count: int, offset: int, shape: tuple[int, ...]) -> Tensor:
        """(count, *shape): pair k's values row-major at ``base + k·stride + offset``."""
        strides = [self.stride]
        for dim in range(1, len(shape)):
            strides.append(math.prod(shape[dim:]))
        strides.append(1)
        return self.table.as_strided((count, *shape), strides, self.base + first * self.stride + offset)

    def factors_t(self, first: int = 0, count: int = 1) -> tuple[Tensor, Tensor]:
        """The transposed factors as stored: Aᵀ (count, r, m), Bᵀ (count, r, n) — views; for an expert stack
        Aᵀ (count, E, r, m), Bᵀ (count, E, r, n)."""
        key = (first, count)
        if key not in self._factor_views:  # the forward and the update ask for the same windows
            m, n = self.spec.matrix_shape
            r = self.spec.rank
            assert r is not None
            e = self.spec.num_experts
            lead = (e,) if self.spec.experts else ()
            self._factor_views[key] = (
                self._window(first, count, 0, (*lead, r, m)),
                self._window(first, count, e * m * r, (*lead, r, n)),
            )
        return self._factor_views[key]

    def masked_a_t(self, a_t: Tensor) -> Tensor:
        """Aᵀ (…, r, m) with the columns of ``zero_rows`` zeroed (a copy), or ``a_t`` itself if none."""
        if not self.spec.zero_rows:
            return a_t
        a_t = a_t.clone()
        a_t[..., list(self.spec.zero_rows)] = 0
        return a_t

    def full(self, first: int = 0, count: int = 1) -> Tensor:
        """Full-rank noise of pairs ``first .. first+count-1``: (count, *shape) — a view."""
        return self._window(first, count, 0, tuple(self.spec.shape))

    def dense(self, pairs: Tensor, signs: Tensor) -> Tensor:
        """Materialised E for the given pairs: (K, *shape) with E_k = s_k A_k B_kᵀ/√r or s_k ε_k, on the
        table's device (``pairs`` and ``signs`` may live anywhere).

        O(K·|θ_j|) — for parameters a forward uses directly (activation-sized) and for single members."""
        pairs, signs = pairs.to(self.table.device), signs.to(device=self.table.device, dtype=self.table.dtype)
        if self.spec.experts:
            a_t, b_t = self.factors_t(0, int(pairs.max()) + 1)
            scale = signs.to(a_t.dtype).view(-1, 1, 1, 1) / math.sqrt(self.spec.rank)
            return torch.matmul((a_t[pairs] * scale).transpose(-1, -2), b_t[pairs])  # (K, E, m, n)
        if self.spec.low_rank:
            a_t, b_t = self.factors_t(0, int(pairs.max()) + 1)
            a_t, b_t = self.masked_a_t(a_t[pairs]), b_t[pairs]  # (K, r, m), (K, r, n)
            scale = signs.view(-1, 1, 1) / math.sqrt(self.spec.rank)
            return torch.bmm((a_t * scale).transpose(1, 2), b_t).view(-1, *self.spec.shape)  # (K, *shape)
        eps = self.full(0, int(pairs.max()) + 1)[pairs]
        eps = eps * signs.view(-1, *([1] * len(self.spec.shape)))
        if self.spec.zero_rows:
            eps[:, list(self.spec.zero_rows)] = 0
        return eps

    def perturb_(self, param: Tensor, pair: int, alpha: float) -> None:
        """In place: ``param += alpha · E_pair`` (alpha = ±σ), without materialising more than one E."""
        if self.spec.experts:  # E matrices: param_e += α A_e B_eᵀ/√r
            a_t, b_t = self.factors_t(pair, 1)  # (1, E, r, m), (1, E, r, n)
            param.baddbmm_(a_t[0].transpose(1, 2), b_t[0], alpha=alpha / math.sqrt(self.spec.rank))
        elif self.spec.low_rank:
            a_t, b_t = self.factors_t(pair, 1)
            a = self.masked_a_t(a_t[0]).T  # (m, r)
            scale = alpha / math.sqrt(self.spec.rank)
            if param.dim() == 2 or param.is_contiguous():
                matrix = param if param.dim() == 2 else param.view(self.spec.matrix_shape)
                matrix.addmm_(a, b_t[0], alpha=scale)
            else:  # a kernel in another memory format (channels_last): no (m, n) view of it exists
                param.add_(torch.mm(a, b_t[0]).view(self.spec.shape), alpha=scale)
        elif self.spec.zero_rows:
            one = torch.tensor([pair], device=param.device), torch.ones(1, device=param.device)
            param.add_(self.dense(*one)[0], alpha=alpha)
        else:
            param.add_(self.full(pair, 1)[0], alpha=alpha)

    def weighted_sum(self, weights: Tensor, chunk: int) -> Tensor:
        """Σ_k w_k E_k over all pairs (unsigned E: fold signs into w), chunked over pairs.

        Low rank: never P materialised m×n matrices, but GEMMs of the stacked factors
        [w_1 A_1 … w_P A_P] [B_1 … B_P]ᵀ, weighting the smaller factor. Small stacks go in one GEMM of
        inner size P·r; larger ones one GEMM (m, P) @ (P, n) per factor column, whose operands are
        strided matrices of the table (row stride = window stride): only the weighted one is copied,
        so the extra memory is O(P·min(m, n)) for any rank (and r = 1 copies nothing more either way)."""
        total = weights.numel()
        if self.spec.low_rank and self.spec.rank > 1:
            weights = weights / math.sqrt(self.spec.rank)  # E_k = A_k B_kᵀ/√r: on the P weights, not on m×n
        out = None
        for first in range(0, total, chunk):
            count = min(chunk, total - first)
            w = weights if count == total else weights[first : first + count]
            if self.spec.experts:  # per expert e: [w_1 A_1e … w_c A_ce] [B_1e … B_ce]ᵀ, one batched GEMM
                a_t, b_t = self.factors_t(first, count)  # (c, E, r, m), (c, E, r, n)
                c, e, r, m = a_t.shape
                a = (a_t * w.to(a_t.dtype).view(c, 1, 1, 1)).permute(1, 3, 0, 2).reshape(e, m, c * r)
                b = b_t.transpose(0, 1).reshape(e, c * r, -1)  # (E, c·r, n)
                out = torch.bmm(a, b) if out is None else out.baddbmm_(a, b)
            elif self.spec.low_rank:
                m, n = self.spec.matrix_shape
                r = self.spec.rank
                a_t, b_t = self.factors_t(first, count)  # (c, r, m), (c, r, n)
                if r > 1 and count * r * (m + n) <= _STACKED_UPDATE_VALUES:
                    a_t, b_t = a_t.reshape(-1, 1, m), b_t.reshape(-1, 1, n)  # (c·r, 1, ·): a copy for r > 1
                    w = w.repeat_interleave(r)
                w = w.view(-1, 1)
                for col in range(a_t.shape[1]):
                    a, b = a_t[:, col], b_t[:, col]  # (c, m), (c, n)
                    if m <= n:
                        a = a * w
                    else:
                        b = b * w
                    out = torch.mm(a.T, b) if out is None else out.addmm_(a.T, b)
            else:
                eps = self.full(first, count).reshape(count, -1)  # (c, numel): a view of the table
                out = torch.mv(eps.t(), w) if out is None else out.addmv_(eps.t(), w)
        assert out is not None
        out = out if out.shape == self.spec.shape else out.view(self.spec.shape)  # (m, n) or (numel,) → shape
        if self.spec.zero_rows:  # rows of the parameter, not elements of a flat vector
            out[list(self.spec.zero_rows)] = 0
        return out
