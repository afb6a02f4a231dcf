r"""Sampling that keeps antithetic pairs paired: the randomness of a row is keyed by its pair, not drawn.

ES with mirrored members compares $f(\theta + \sigma E)$ with $f(\theta - \sigma E)$; if the two members
also drew different sampling noise, that difference would drown the one ES measures. So
[`PairedSampling`][eggroll_trainer.llm.sampling.PairedSampling] samples by the Gumbel-max trick with
**keyed** noise: at decoding step t, row (member i, prompt p) picks

$$x_t = \arg\max_v \big(\log \pi_T(v) + g_v\big),\qquad g_v = -\log(-\log u_v),\quad
u = \mathrm{U}(0,1)^V \text{ keyed by } (\text{seed}, \text{generation}, \lfloor i/2 \rfloor, p, t),$$

where $\pi_T$ is the model's distribution at temperature T, cut to the top-p nucleus — an exact sample of
it. Both members of a pair read the same $u$ (so with σ → 0 they write the same text), members of other
pairs read independent ones, and the draw does not depend on how the population is chunked or sharded
over ranks. Generation then runs greedy (``do_sample=False``) on the processed scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..noise.table import hash_key
from ..population import current_population

__all__ = ["PairedSampling"]


class PairedSampling:
    """A ``transformers`` logits processor (put it in ``logits_processor=[...]``) drawing keyed samples.

    Args:
        temperature: T > 0.
        top_p: keep the smallest set of tokens whose probability reaches ``top_p`` (1: all).
        seed: the run's seed; set ``generation`` before each step (the trainer's generation counter).
        antithetic: members 2k and 2k+1 share noise (the trainer's ``antithetic``); else every member has
            its own.
    """

    def __init__(
        self, temperature: float, top_p: float = 1.0, seed: int = 0, antithetic: bool = True
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"Invalid temperature: {temperature} (> 0; greedy decoding needs no sampler)")
        if not 0 < top_p <= 1:
            raise ValueError(f"Invalid top_p: {top_p} (expected 0 < top_p <= 1)")
        self.temperature, self.top_p, self.seed, self.antithetic = temperature, top_p, seed, antithetic
        self.generation = 0

    def _uniforms(self, rows: int, vocab: int, step: int) -> Tensor:
        """``(rows, V)`` keyed U(0,1) values; rows are K·b, member-major, of the members now evaluated."""
        info = current_population()
        if info is None:
            raise ValueError("PairedSampling needs population mode (batched=True): a row's key is its member")
        prompts = rows // info.size
        out = torch.empty(rows, vocab)
        for i in range(info.size):
            member = info.start + i
            pair = member // 2 if self.antithetic else member
            for p in range(prompts):
                key = hash_key(self.seed, self.generation, pair, p, step)
                g = torch.Generator().manual_seed(key % (1 << 63))
                out[i * prompts + p] = torch.rand(vocab, generator=g)
        return out.clamp_(min=1e-20)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        step = input_ids.shape[1]  # tokens so far: rows are left-padded, so the same for every row
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)  # (rows, V)
        if self.top_p < 1:
            sorted_logp, order = logp.sort(dim=-1, descending=True)
            before = sorted_logp.exp().cumsum(dim=-1) - sorted_logp.exp()  # mass strictly above each token
            drop = torch.zeros_like(logp, dtype=torch.bool).scatter(1, order, before >= self.top_p)
            logp = logp.masked_fill(drop, -torch.inf)
        gumbel = -torch.log(-torch.log(self._uniforms(*logp.shape, step).to(logp.device)))
        return (logp + gumbel).to(scores.dtype)
