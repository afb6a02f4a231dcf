r"""Language-model fitness: a population's completions in one ``generate``, scored by a reward.

**Population generation.** In population mode a model's batch holds K·b rows, member-major: member i
owns rows i·b … i·b+b−1. [`population_generate`][eggroll_trainer.llm.fitness.population_generate] repeats the P
prompts K times (``input_ids.repeat(K, 1)``: K·P rows) and calls ``model.generate`` **once**, with the KV
cache, greedy by default — so every decoding step is one forward of all members. (Beam search reorders rows
across members and is refused.) Outside population mode K = 1 and it is plain generation, so the same
fitness function serves sequential evaluation, batched evaluation and the unperturbed model.

**Per-prompt baselines.** Every member answers the same P prompts; reward $r_{ip}$ (member i, prompt p).
The trainer's ``group_size`` groups *consecutive members* (the paper's layout gives each group its own
prompt); here a group would be the whole population, so we shape per prompt instead
([`PromptBaseline`][eggroll_trainer.llm.fitness.PromptBaseline], passed as ``fitness_shaping``):

$$a_{ip} = \frac{r_{ip} - \bar r_p}{s_p + \epsilon},\qquad \bar r_p = \tfrac1N\sum_j r_{jp},\quad
s_p^2 = \tfrac1N\sum_j (r_{jp} - \bar r_p)^2,\qquad \tilde f_i = \mathrm{zscore}_i\Big(\tfrac1P\sum_p a_{ip}\Big).$$

Subtracting $\bar r_p$ alone would change nothing — it shifts every member's mean by the same
$\frac1P\sum_p \bar r_p$, which the final z-score removes — so the baseline matters through $s_p$: a prompt
that every member gets right (or wrong) contributes nothing, and one that splits the population counts in
proportion to how it splits it, however rare its successes (GRPO's per-prompt advantage). With
``scale="none"`` the score is the plain mean reward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..population import current_population
from ..shaping import zscore

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


def members_now() -> int:
    """K, the members the current forward holds (1 outside population mode)."""
    info = current_population()
    return 1 if info is None else info.size


@torch.no_grad()
def population_generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int,
    **generate_kwargs: Any,
) -> Tensor:
    """New tokens of every member for every prompt, ``(K, P, T_new)``, from one ``model.generate`` call.

    Args:
        model: a Hugging Face causal LM (in population mode, or not: then K = 1).
        input_ids: ``(P, T)`` left-padded prompts; ``attention_mask`` the same shape.
        max_new_tokens: decoding length (generation stops earlier when every row has ended).
        **generate_kwargs: passed to ``generate`` (``pad_token_id``, ``do_sample``, ...); greedy by default.
    """
    if generate_kwargs.get("num_beams", 1) != 1 or generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError(
            "population_generate: beam search and num_return_sequences reorder rows; use greedy/sampling"
        )
    if input_ids.dim() != 2:
        raise ValueError(f"population_generate: input_ids must be (P, T), got {tuple(input_ids.shape)}")
    k, p = members_now(), input_ids.shape[0]
    rows = input_ids.repeat(k, 1)  # (K·P, T): member i owns rows i·P … i·P+P−1
    mask = None if attention_mask is None else attention_mask.repeat(k, 1)
    generate_kwargs.setdefault("do_sample", False)
    out = model.generate(
        input_ids=rows, attention_mask=mask, max_new_tokens=max_new_tokens, use_cache=True, **generate_kwargs
    )  # (K·P, T + T_new)
    return out[:, input_ids.shape[1] :].reshape(k, p, -1)


@dataclass
class PromptBatch:
    """One step's prompts and the data's other fields (each list aligned with ``prompts``)."""

    prompts: list[str]
    fields: dict[str, list[Any]] = field(default_factory=dict)


class PromptBaseline:
    """Per-prompt fitness shaping for members that all answer the same prompts (see the module docstring).

    The fitness function calls [`record`][eggroll_trainer.llm.fitness.PromptBaseline.record] with the ``(K, P)``
    rewards of the members it evaluated (in the trainer's order: batched chunks or one member at a time);
    the trainer then calls the object as its ``fitness_shaping`` with the N mean rewards, and gets
    $\\tilde f$. Works in one process (not with multi-process sharding, where a rank sees only its shard).

    Args:
        population_size: N.
        scale: ``"std"`` (divide by each prompt's std over members) or ``"none"`` (mean reward).
    """

    def __init__(self, population_size: int, scale: str = "std") -> None:
        if scale not in ("std", "none"):
            raise ValueError(f"Invalid scale: {scale!r} (expected 'std' or 'none')")
        self.population_size = population_size
        self.scale = scale
        self._rows: list[Tensor] = []

    def record(self, rewards: Tensor, start: int | None = None) -> Tensor:
        """Store the ``(K, P)`` rewards of members ``start … start+K−1`` (``None``: the next K members, as
        sequential evaluation calls one member at a time); returns their mean rewards ``(K,)``."""
        rewards = torch.as_tensor(rewards, dtype=torch.float64).cpu()
        if rewards.dim() != 2:
            raise ValueError(f"PromptBaseline.record: rewards must be (K, P), got {tuple(rewards.shape)}")
        held = sum(r.shape[0] for r in self._rows)
        if start == 0 or held + rewards.shape[0] > self.population_size:  # a new generation starts
            self._rows.clear()
        elif start is not None and start != held:
            raise ValueError(f"PromptBaseline.record: members from {start} recorded after {held} members")
        self._rows.append(rewards)
        return rewards.mean(dim=1)

    def advantages(self) -> Tensor:
        """``(N, P)`` per-prompt advantages of the recorded generation (non-finite rewards rank worst)."""
        r = torch.cat(self._rows) if self._rows else torch.empty(0, 0, dtype=torch.float64)
        if r.shape[0] != self.population_size:
            raise ValueError(
                f"PromptBaseline: rewards of {r.shape[0]} of {self.population_size} members were recorded; the "
                "fitness function must record() every member (multi-process sharding is not supported)"
            )
        finite = torch.isfinite(r)
        low = torch.where(finite, r, torch.inf).amin(dim=0, keepdim=True)  # (1, P) worst finite
        r = torch.where(finite, r, torch.nan_to_num(low, posinf=0.0) - 1.0)
        centered = r - r.mean(dim=0, keepdim=True)  # (N, P)
        if self.scale == "none":
            return centered
        return centered / (centered.pow(2).mean(dim=0, keepdim=True).sqrt() + 1e-8)

    def __call__(self, scores: Tensor) -> Tensor:
        """Shaped fitness ``(N,)``: z-score of the mean per-prompt advantage."""
        if scores.shape != (self.population_size,):
            raise ValueError(
                f"PromptBaseline: expected {self.population_size} scores, got {tuple(scores.shape)}"
            )
        weights = zscore(self.advantages().mean(dim=1))
        self._rows.clear()
        return weights.to(scores)


class RewardFitness:
    """``fitness_fn`` for an ES trainer: every member completes ``self.prompts``; ``reward`` scores them.

    One call generates the K·P completions of the K members in population mode (K = 1 sequentially) and
    calls ``reward(prompts, completions)`` once with K·P pairs, member-major. Returns each member's mean
    reward ``(K,)``; with a ``baseline`` the ``(K, P)`` rewards are recorded for per-prompt shaping.
    Counts ``rows`` and ``new_tokens`` generated and ``seconds`` spent, for throughput figures.

    Args:
        tokenizer: the model's tokenizer (left padding).
        reward: ``reward(prompts, completions) -> list[float]`` (higher is better).
        max_new_tokens: decoding length.
        baseline: a [`PromptBaseline`][eggroll_trainer.llm.fitness.PromptBaseline] to record into, or ``None``.
        **generate_kwargs: passed to ``generate``.
    """

    def __init__(
        self,
        tokenizer: Any,
        reward: RewardFn,
        max_new_tokens: int,
        baseline: PromptBaseline | None = None,
        **generate_kwargs: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.reward = reward
        self.max_new_tokens = max_new_tokens
        self.baseline = baseline
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        self.generate_kwargs = generate_kwargs
        self.prompts: list[str] = []
        self.fields: dict[str, list[Any]] = {}
        self.last_completions: list[list[str]] = []
        self.rows = self.new_tokens = 0
        self.seconds = 0.0

    @property
    def batch(self) -> PromptBatch:
        """This step's prompts and fields; the reward gets the fields as keywords, aligned to its rows."""
        return PromptBatch(self.prompts, self.fields)

    @batch.setter
    def batch(self, batch: PromptBatch) -> None:
        self.prompts, self.fields = list(batch.prompts), dict(batch.fields)

    def complete(self, model: Any, prompts: Sequence[str]) -> list[list[str]]:
        """``completions[i][p]``: member i's completion of prompt p (K lists of P strings)."""
        import time

        start = time.perf_counter()
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        device = next(model.parameters()).device
        new = population_generate(
            model, enc["input_ids"].to(device), enc["attention_mask"].to(device),
            max_new_tokens=self.max_new_tokens, **self.generate_kwargs,
        )  # fmt: skip
        k, p, t = new.shape
        text = self.tokenizer.batch_decode(new.reshape(k * p, t), skip_special_tokens=True)
        self.rows += k * p
        self.new_tokens += k * p * t
        self.seconds += time.perf_counter() - start
        return [text[i * p : (i + 1) * p] for i in range(k)]

    def __call__(self, model: Any) -> Tensor:
        if not self.prompts:
            raise ValueError(
                "RewardFitness: set .prompts (this generation's prompts) before the trainer steps"
            )
        completions = self.complete(model, self.prompts)
        self.last_completions = completions
        k, p = len(completions), len(self.prompts)
        flat = [c for member in completions for c in member]
        fields = {name: list(values) * k for name, values in self.fields.items()}
        values = [float(v) for v in self.reward(self.prompts * k, flat, **fields)]
        if len(values) != k * p:
            raise ValueError(f"reward returned {len(values)} values for {k * p} completions")
        rewards = torch.tensor(values, dtype=torch.float64).view(k, p)
        info = current_population()
        if self.baseline is None or (info is not None and info.total != self.baseline.population_size):
            return rewards.mean(dim=1)  # not a trainer step (e.g. evaluate_fitness): nothing to record
        return self.baseline.record(rewards, None if info is None else info.start)
