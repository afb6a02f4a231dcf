r"""fp32 master copies of 16-bit parameters, so that updates below half an ulp accumulate.

A bf16 number carries 8 significant bits: a step $|\Delta\theta| < 2^{-9}|\theta|$ (half an ulp) rounds back
to $\theta$, every time, and a run whose steps are all that small never moves (fp16: $2^{-12}|\theta|$).
Language-model steps are that small (about $0.1\sigma \approx 10^{-4}$ per weight, DESIGN §8). So for every
trained bf16/fp16 parameter the trainer keeps an fp32 copy $\hat\theta$; the update rule steps $\hat\theta$ with
$-\hat g$ cast to fp32 (its moments are fp32 too), and the parameter receives the rounded value:

$$\hat\theta \leftarrow \mathrm{rule}(\hat\theta, -\hat g),\qquad \theta \leftarrow \mathrm{bf16}(\hat\theta).$$

Noise, sequential members and the population forward use the 16-bit parameter as before. A parameter
changed outside the trainer (its value is no longer its master's rounding: a ``load_state_dict`` of the model,
``reset``) gets a fresh master from its value at the next step. The masters are part of the trainer's
``state_dict``, so a resumed run continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["SIXTEEN_BIT", "MasterWeights"]

#: Parameter dtypes that get an fp32 master copy.
SIXTEEN_BIT = (torch.bfloat16, torch.float16)


class MasterWeights:
    """The fp32 masters of a trainer's 16-bit parameters (``None`` for the others), made at the first update.

    Args:
        enabled: ``False`` keeps no copies: 16-bit parameters are stepped in their own precision.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)
        self.copies: list[Tensor | None] = []

    def wanted(self, params: Sequence[Tensor]) -> bool:
        return self.enabled and any(p.dtype in SIXTEEN_BIT for p in params)

    @contextmanager
    def stepping(self, params: Sequence[Tensor], grads: list[Tensor | None]) -> Iterator[list[Tensor | None]]:
        """Inside: every 16-bit parameter holds its fp32 master as ``.data`` and the yielded estimates are
        cast to fp32 for it; on exit each parameter gets its master's rounded value back (also on error)."""
        if not self.wanted(params):
            yield grads
            return
        self._sync(params)
        cast = [g if g is None or m is None else g.float() for g, m in zip(grads, self.copies)]
        with self.swapped(params):
            yield cast

    @contextmanager
    def swapped(self, params: Sequence[Tensor]) -> Iterator[None]:
        """Each 16-bit parameter holds its fp32 master as ``.data`` inside (what the rule steps, and what a
        rule's ``load_state_dict`` casts moments to); on exit it holds the master's rounded value."""
        held = [(p, p.data, m) for p, m in zip(params, self.copies) if m is not None]
        for p, _, master in held:
            p.data = master
        try:
            yield
        finally:
            for p, sixteen, master in held:
                sixteen.copy_(master)  # round to nearest
                p.data = sixteen

    def state(self) -> list[Tensor | None] | None:
        """Copies of the masters for a checkpoint (``None`` when there are none)."""
        if not any(m is not None for m in self.copies):
            return None
        return [None if m is None else m.clone() for m in self.copies]

    def load(self, saved: list[Tensor | None] | None, params: Sequence[Tensor]) -> None:
        """Masters from a checkpoint, on each parameter's device; a missing one is made from its parameter."""
        self.copies = []
        if saved is not None:
            self.copies = [None if m is None else m.to(device=p.device, dtype=torch.float32, copy=True)
                           for m, p in zip(saved, params)]  # fmt: skip
        if self.wanted(params):
            self._sync(params)

    def reset(self) -> None:
        self.copies = []

    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.copies if m is not None)

    def _sync(self, params: Sequence[Tensor]) -> None:
        """A master for every 16-bit parameter: kept where its rounding is the parameter's value, else fresh."""
        if len(self.copies) != len(params):
            self.copies = [None] * len(params)
        for i, p in enumerate(params):
            if p.dtype not in SIXTEEN_BIT:
                self.copies[i] = None
                continue
            master = self.copies[i]
            if master is None or master.shape != p.shape or not torch.equal(master.to(p.dtype), p.detach()):
                self.copies[i] = p.detach().to(torch.float32, copy=True)
