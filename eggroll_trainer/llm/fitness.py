r"""Language-model fitness: a population's completions in one ``generate``, scored by a reward.

**Population generation.** In population mode a model's batch holds K·b rows, member-major: member i
owns rows i·b … i·b+b−1. [`population_generate`][eggroll_trainer.llm.fitness.population_generate] repeats the P
prompts K times (``input_ids.repeat(K, 1)``: K·P rows) and calls ``model.generate`` **once**, with the KV
cache, greedy by default — so every decoding step is one forward of all members. (Beam search reorders rows
across members and is refused.) Outside population mode K = 1 and it is plain generation, so the same
fitness function serves sequential evaluation, batched evaluation and the unperturbed model.

**Two layouts.** A batch of prompts (a [`PromptBatch`][eggroll_trainer.llm.fitness.PromptBatch]) is
answered in one of two ways, set by [`RewardFitness`][eggroll_trainer.llm.fitness.RewardFitness]'s
``group_size``:

* ``group_size=0``: every member answers every prompt of the batch (P = the batch's length): N·P rows that
  explore N/2 pairs of directions. Shape per prompt with
  [`PromptBaseline`][eggroll_trainer.llm.fitness.PromptBaseline] (``shaping.prompt_baseline``).
* ``group_size=G``: the batch holds N/G·b prompts and member i answers the b prompts of group i // G (the
  EGGROLL paper's layout): at the same N·b rows the population explores N/2 pairs, each group of G members
  compared on its own prompts. Pass the same ``group_size=G`` to the trainer: it subtracts each group's mean
  and divides by the global std (the paper's group-wise baseline).

Either way the fitness returns ``(K, b)`` rewards (b = P without groups), and the trainer shapes the
gathered ``(N, b)`` matrix — a pure function of it, so chunks, ``evaluate_fitness()`` between steps and
``torch.distributed`` ranks change nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..population import current_population
from ..shaping import prompt_baseline

#: ``reward(prompts, completions, **fields) -> list[float]``: one value a row (higher is better).
RewardFn = Callable[..., Sequence[float]]


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
    return generate_rows(model, rows, mask, max_new_tokens=max_new_tokens, **generate_kwargs).reshape(
        k, p, -1
    )


@torch.no_grad()
def generate_rows(
    model: Any, rows: Tensor, attention_mask: Tensor | None, *, max_new_tokens: int, **generate_kwargs: Any
) -> Tensor:
    """New tokens ``(K·b, T_new)`` of rows already laid out member-major (member i owns rows i·b … i·b+b−1),
    from one greedy-by-default ``model.generate`` call with the KV cache."""
    if generate_kwargs.get("num_beams", 1) != 1 or generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError(
            "generate_rows: beam search and num_return_sequences reorder rows; use greedy/sampling"
        )
    generate_kwargs.setdefault("do_sample", False)
    out = model.generate(
        input_ids=rows, attention_mask=attention_mask, max_new_tokens=max_new_tokens, use_cache=True,
        **generate_kwargs,
    )  # (K·b, T + T_new)  # fmt: skip
    return out[:, rows.shape[1] :]


class PromptBaseline:
    """Per-prompt fitness shaping, ``(N, P) -> (N,)``: ``shaping.prompt_baseline`` as a ``fitness_shaping``.

    Stateless: the trainer hands it the whole generation's ``(N, P)`` rewards (gathered across chunks and
    ranks), so nothing can get out of step. See [`prompt_baseline`][eggroll_trainer.shaping.prompt_baseline]
    for the math.

    Args:
        scale: ``"std"`` (per-prompt z-scores), ``"rank"`` (per-prompt centred ranks, ties averaged) or
            ``"none"`` (the z-score of the mean reward).
    """

    def __init__(self, scale: str = "std") -> None:
        prompt_baseline(torch.zeros(2, 1), scale)  # validates scale
        self.scale = scale

    def __call__(self, scores: Tensor) -> Tensor:
        """Shaped fitness ``(N,)`` of the ``(N, P)`` rewards."""
        return prompt_baseline(scores, self.scale)

    def __repr__(self) -> str:
        return f"PromptBaseline(scale={self.scale!r})"


@dataclass
class PromptBatch:
    """One generation's prompts, with any per-prompt data the reward needs (answers, test cases, ...).

    Each list in ``fields`` is aligned with ``prompts``; the reward receives the same fields aligned with its
    rows (``reward(prompts, completions, answer=[...])``).
    """

    prompts: list[str]
    fields: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prompts = list(self.prompts)
        for name, values in self.fields.items():
            if len(values) != len(self.prompts):
                raise ValueError(
                    f"PromptBatch: field {name!r} has {len(values)} values for {len(self.prompts)} prompts"
                )

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, index: Sequence[int]) -> PromptBatch:
        """The rows ``index`` (repeats allowed), fields included."""
        return PromptBatch(
            [self.prompts[i] for i in index], {k: [v[i] for i in index] for k, v in self.fields.items()}
        )


class RewardFitness:
    """``fitness_fn`` for an ES trainer: members complete the prompts of ``self.batch``; ``reward`` scores them.

    One call generates the completions of the K members in population mode (K = 1 outside it) in one
    ``generate`` and calls ``reward(prompts, completions, **fields)`` **once**, with K·b rows, member-major,
    every field list aligned with the rows. Returns the ``(K, b)`` rewards: give the trainer a
    ``fitness_shaping`` for matrices ([`PromptBaseline`][eggroll_trainer.llm.fitness.PromptBaseline]) or a
    built-in name (applied to each member's mean).

    * ``group_size=0``: every member answers all b = len(batch) prompts.
    * ``group_size=G > 0``: in a trainer step (population mode), the batch holds N/G·b prompts and member i
      answers the b prompts of group i // G; pass ``group_size=G`` to the trainer too. Outside a step, and in
      sequential mode (``batched=False``, where a fitness call cannot tell which member it scores), the model
      answers the whole batch.

    Counts ``rows`` and ``new_tokens`` generated and ``seconds`` spent, for throughput figures;
    ``last_completions[i]`` holds member i's completions of the last call.

    Args:
        tokenizer: the model's tokenizer (left padding).
        reward: ``reward(prompts, completions, **fields) -> list[float]`` (higher is better).
        max_new_tokens: decoding length.
        group_size: members that share their prompts (0: all of them share the whole batch).
        **generate_kwargs: passed to ``generate`` (greedy by default).
    """

    def __init__(
        self,
        tokenizer: Any,
        reward: RewardFn,
        max_new_tokens: int,
        *,
        group_size: int = 0,
        **generate_kwargs: Any,
    ) -> None:
        if group_size < 0:
            raise ValueError(f"Invalid group_size: {group_size} (0: no groups, or G > 0 members per group)")
        self.tokenizer = tokenizer
        self.reward = reward
        self.max_new_tokens = max_new_tokens
        self.group_size = int(group_size)
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        self.generate_kwargs = generate_kwargs
        self.batch = PromptBatch([])
        self.last_completions: list[list[str]] = []
        self.rows = self.new_tokens = 0
        self.seconds = 0.0

    @property
    def prompts(self) -> list[str]:
        """The prompts of ``self.batch``; setting it sets a batch without fields."""
        return self.batch.prompts

    @prompts.setter
    def prompts(self, prompts: Sequence[str]) -> None:
        self.batch = PromptBatch(list(prompts))

    def complete(self, model: Any, prompts: Sequence[str], members: int | None = None) -> list[list[str]]:
        """``completions[i][j]``: member i's completion of its j-th prompt.

        ``members=None``: every member (K of ``current_population``) answers all ``prompts``. ``members=K``:
        ``prompts`` already holds K·b rows, member-major (member i answers rows i·b … i·b+b−1)."""
        start = time.perf_counter()
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        device = next(model.parameters()).device
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        if members is None:
            new = population_generate(
                model, ids, mask, max_new_tokens=self.max_new_tokens, **self.generate_kwargs
            )
            k, b, t = new.shape  # (K, P, T_new)
        else:
            k, b = members, len(prompts) // members
            new = generate_rows(model, ids, mask, max_new_tokens=self.max_new_tokens, **self.generate_kwargs)
            t = new.shape[1]
        text = self.tokenizer.batch_decode(new.reshape(k * b, t), skip_special_tokens=True)
        self.rows += k * b
        self.new_tokens += k * b * t
        self.seconds += time.perf_counter() - start
        return [text[i * b : (i + 1) * b] for i in range(k)]

    def member_rows(self) -> tuple[PromptBatch, int | None]:
        """This call's rows: ``(batch, None)`` when every member answers the whole batch, else the K·b rows of
        the grouped layout, member-major, and K."""
        info = current_population()
        if self.group_size == 0 or info is None or info.total == 1:
            return self.batch, None
        g, n = self.group_size, info.total
        if n % g:
            raise ValueError(f"RewardFitness: group_size={g} must divide the population size {n}")
        if len(self.batch) % (n // g):
            raise ValueError(
                f"RewardFitness: with group_size={g} and N={n} the batch must hold a multiple of {n // g} prompts "
                f"(N/G groups × b prompts each), got {len(self.batch)}"
            )
        b = len(self.batch) // (n // g)
        index = [(i // g) * b + j for i in range(info.start, info.start + info.size) for j in range(b)]
        return self.batch.take(index), info.size

    def __call__(self, model: Any) -> Tensor:
        if not self.batch.prompts:
            raise ValueError(
                "RewardFitness: set .batch (or .prompts) to this generation's prompts before the trainer steps"
            )
        rows, members = self.member_rows()
        completions = self.complete(model, rows.prompts, members)
        self.last_completions = completions
        k, b = len(completions), len(completions[0])
        if members is None:  # every member answers the whole batch: repeat it member-major
            rows = rows.take(list(range(b)) * k)
        flat = [c for member in completions for c in member]
        values = [float(v) for v in self.reward(rows.prompts, flat, **rows.fields)]
        if len(values) != k * b:
            raise ValueError(f"reward returned {len(values)} values for {k * b} completions")
        return torch.tensor(values, dtype=torch.float64).view(k, b)
