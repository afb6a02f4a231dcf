"""`EGGROLLTrainer`: low-rank Evolution Strategies (EGGROLL, arXiv 2511.16652)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..noise.params import NoiseSpec
from ..noise.perturbations import is_expert_stack
from ..validation import check, is_int
from .base import ESTrainer
from .evaluation import FitnessFn


class EGGROLLTrainer(ESTrainer):
    r"""EGGROLL: Evolution Guided General Optimization via Low-rank Learning.

    A weight $W \in \mathbb R^{m\times n}$ gets the low-rank perturbation

    $$E_k = \frac{1}{\sqrt r} A_k B_k^\top,\qquad A_k \in \mathbb R^{m\times r},\ B_k \in \mathbb R^{n\times r},
    \ \text{entries i.i.d. } \mathcal N(0, 1),$$

    A tensor of more dimensions (a convolution kernel (out, in, kh, kw)) is read as the matrix
    out × (in·kh·kw) — except a mixture-of-experts stack (E, out, in) (a 3-D tensor that is no convolution's
    kernel), whose E experts each get their own $A_{k,e} B_{k,e}^\top/\sqrt r$; 1-D parameters (biases, norm weights) get full-rank noise, or none with
    `freeze_nonlora=True`. The estimate

    $$\hat g_W = \frac{1}{N\sigma} \sum_i \tilde f_i\, s_i E_{k(i)}
             = \frac{1}{N\sigma\sqrt r}\,\big[\tilde w_1 A_1 \cdots \tilde w_P A_P\big]\,
               \big[B_1 \cdots B_P\big]^\top$$

    is one (chunked) GEMM of an $m\times Pr$ by a $Pr\times n$ matrix, with $\tilde w_k$ the signed pair
    weights; its rank is $\min(Pr, m, n)$ — full rank in practice — and it converges to the full-rank ES
    update at $O(1/r)$. With `batched=True` each `nn.Linear` evaluates all members in one forward:
    $y_i = x_i W^\top + b + \sigma s_i (x_i B_k) A_k^\top/\sqrt r + \sigma s_i \beta_k$.

    Args:
        params: parameters to train (usually `model.parameters()`) or param-group dicts.
        model: the module whose parameters are trained; handed to `fitness_fn`.
        fitness_fn: `fitness_fn(model) -> float` (higher is better), or one score per member with
            `batched=True`; may be `None` when every step gets a closure.
        population_size: members per generation N.
        learning_rate: step size (stored as `param_groups[i]["lr"]`).
        sigma: noise scale σ (stored as `param_groups[i]["sigma"]`).
        rank: r, the rank of each member's weight perturbation.
        noise_reuse: k ≥ 2 keeps a noise epoch for k generations (0 or 1: fresh every generation).
            eggroll-trainer 0.1.0 also switched antithetic sampling with this flag; here that is
            `antithetic` (on by default).
        group_size: G > 0 subtracts each block's mean and divides by the global std (G must divide N).
        freeze_nonlora: if True, parameters without low-rank noise (those of fewer than 2 dimensions:
            biases, norm weights) are neither perturbed nor updated.
        device: if given, the model is moved there; otherwise the parameters' device is used.
        seed: noise seed; `None` draws one (never from torch's global RNG).
        **options: the keyword-only arguments of [`ESTrainer`][eggroll_trainer.ESTrainer] (`lr`,
            `antithetic`, `fitness_shaping`, `optimizer`, `momentum`, `weight_decay`, `betas`, `batched`,
            `chunk_size`, ...).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        model: nn.Module,
        fitness_fn: FitnessFn | None,
        population_size: int = 256,
        learning_rate: float = 0.01,
        sigma: float = 0.1,
        rank: int = 1,
        noise_reuse: int = 0,
        group_size: int = 0,
        freeze_nonlora: bool = False,
        device: torch.device | str | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> None:
        check(is_int(rank) and rank >= 1, f"Invalid rank: {rank}")
        self.rank = int(rank)
        self.freeze_nonlora = bool(freeze_nonlora)
        super().__init__(
            params, model, fitness_fn, population_size, learning_rate, sigma, device, seed,
            noise_reuse=noise_reuse, group_size=group_size, **options,
        )  # fmt: skip

    def _noise_spec(self, param: Tensor) -> NoiseSpec | None:
        if is_expert_stack(param, self.model):  # (E, out, in): each expert its own A_e B_eᵀ/√r
            return NoiseSpec(param.shape, rank=self.rank, experts=True)
        if param.dim() >= 2:  # a matrix, or a kernel read as out × (in·kh·kw)
            return NoiseSpec(param.shape, rank=self.rank)
        return None if self.freeze_nonlora else NoiseSpec(param.shape, rank=None)
