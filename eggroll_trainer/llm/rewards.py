r"""Rewards for language-model ES: every form a user brings, turned into one of two shapes.

**Completion rewards** score generated text. The batch form is

    reward(prompts, completions, **fields) -> list[float]      # one value per row, higher is better

called once per population-mode call with K·b rows, member-major (member i owns rows i·b … i·b+b−1),
each field list (``answer``, … — the data's other columns) aligned to the rows.
[`RewardFitness`][eggroll_trainer.llm.fitness.RewardFitness] generates the completions and calls it.

**Model rewards** ([`ModelReward`][eggroll_trainer.llm.rewards.ModelReward]) need the model itself, not a
completion: they *are* the fitness function. The caller sets ``reward.batch`` (a
[`PromptBatch`][eggroll_trainer.llm.fitness.PromptBatch]) before each step; ``reward(model)`` returns
``(K,)`` or ``(K, b)`` scores. [`PerplexityReward`][eggroll_trainer.llm.rewards.PerplexityReward] is the
teacher-forced log-likelihood of reference text (ES supervised fine-tuning);
[`CustomReward`][eggroll_trainer.llm.rewards.CustomReward] hands ``reward_fn(model, inputs)`` the model.

[`as_reward`][eggroll_trainer.llm.rewards.as_reward] accepts all of them, plus ``"perplexity"``, a
``"lambda ..."`` string (evaluated as Python) and a ``.py`` file defining ``reward``, ``score`` or
``reward_fn``.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..shaping import member_means
from .fitness import members_now

__all__ = [
    "BatchReward",
    "TextReward",
    "ModelReward",
    "CustomReward",
    "PerplexityReward",
    "MultiReward",
    "as_reward",
    "is_model_reward",
    "reward_from_file",
]


def _check_values(values: Sequence[float], rows: int, who: str) -> list[float]:
    out = [float(v) for v in values]
    if len(out) != rows:
        raise ValueError(f"{who} returned {len(out)} values for {rows} completions")
    return out


class BatchReward:
    """``fn(prompts, completions, **fields)``; a function that takes fewer fields (or only
    ``(prompts, completions)``) gets only the fields it names."""

    def __init__(self, fn: Callable[..., Sequence[float]]) -> None:
        if not callable(fn):
            raise ValueError(f"Invalid reward: {fn!r} is not callable")
        self.fn = fn
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # no signature to read: pass every field
            params = [inspect.Parameter("fields", inspect.Parameter.VAR_KEYWORD)]
        self._all = any(p.kind is p.VAR_KEYWORD for p in params)
        self._named = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def __call__(self, prompts: list[str], completions: list[str], **fields: list[Any]) -> list[float]:
        kept = fields if self._all else {k: v for k, v in fields.items() if k in self._named}
        return _check_values(self.fn(prompts, completions, **kept), len(completions), "reward")


class TextReward:
    """A per-text score: ``score(completion) -> float`` for every row (prompts and fields unused)."""

    def __init__(self, score: Callable[[str], float]) -> None:
        if not callable(score):
            raise ValueError(f"Invalid reward: {score!r} is not callable")
        self.score = score

    def __call__(self, prompts: list[str], completions: list[str], **fields: list[Any]) -> list[float]:
        return [float(self.score(text)) for text in completions]


class ModelReward:
    """Base of rewards that need the model: set ``batch`` (prompts and fields) and a ``tokenizer``, then
    ``reward(model)`` → ``(K,)`` or ``(K, b)`` scores (K members in population mode, 1 outside it)."""

    def __init__(self) -> None:
        self.batch: Any = None
        self.tokenizer: Any = None

    def _batch(self) -> tuple[list[str], dict[str, list[Any]]]:
        if self.batch is None or self.tokenizer is None:
            raise ValueError(f"{type(self).__name__}: set .batch and .tokenizer before the trainer steps")
        return list(self.batch.prompts), dict(self.batch.fields)

    def __call__(self, model: Any) -> Tensor:
        raise NotImplementedError


class CustomReward(ModelReward):
    """``reward_fn(model, inputs)``: a full fitness with model access (not a completion reward).

    ``inputs`` holds ``prompts``, the data's fields, the ``tokenizer`` and the tokenized prompts
    ``input_ids`` / ``attention_mask`` (b, T), left-padded, on the model's device. In population mode the model holds
    K members: repeat the rows K times (``members_now()``), member-major, and return ``(K,)`` or
    ``(K, b)`` scores."""

    def __init__(self, reward_fn: Callable[[Any, dict[str, Any]], Any]) -> None:
        super().__init__()
        if not callable(reward_fn):
            raise ValueError(f"Invalid reward: {reward_fn!r} is not callable")
        self.reward_fn = reward_fn

    def __call__(self, model: Any) -> Tensor:
        prompts, fields = self._batch()
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True)
        device = next(model.parameters()).device
        inputs = {"prompts": prompts, **fields, "tokenizer": self.tokenizer}
        inputs.update({k: v.to(device) for k, v in enc.items()})
        return torch.as_tensor(self.reward_fn(model, inputs), dtype=torch.float64).cpu()


class PerplexityReward(ModelReward):
    r"""The mean teacher-forced log-likelihood of reference text: one prefill, no generation.

    Row j is ``prompt_j`` followed by the reference ``fields[field][j]`` (``field=None``: the prompt text
    itself is the reference, language modelling on the data). Its score is

    $$s_j = \frac{1}{|R_j|}\sum_{t \in R_j} \log p_\theta(x_t \mid x_{<t}),$$

    over the reference tokens $R_j$, so higher is better and $-s_j$ is the cross-entropy SFT minimises.
    In population mode the K·b rows go through **one** forward (right-padded; a pad never precedes a
    token it could affect). Memory: the logits are (K·b, T, V) floats — bound K with ``chunk_size``.

    Returns ``(K, b)`` scores.
    """

    def __init__(self, field: str | None = None) -> None:
        super().__init__()
        self.field = field

    def _rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(ids, attention, reference)``, each ``(b, T)``: right-padded tokens and 0/1 masks."""
        prompts, fields = self._batch()
        if self.field is not None and self.field not in fields:
            raise ValueError(f"PerplexityReward: the data has no field {self.field!r} (has {sorted(fields)})")
        tok = self.tokenizer
        rows, refs = [], []
        for j, prompt in enumerate(prompts):
            if self.field is None:
                ids, n_prefix = tok(prompt)["input_ids"], 1  # every token after the first is predicted
            else:
                prefix = tok(prompt)["input_ids"]
                ids = prefix + tok(str(fields[self.field][j]), add_special_tokens=False)["input_ids"]
                n_prefix = len(prefix)
            rows.append(ids)
            refs.append([0] * n_prefix + [1] * (len(ids) - n_prefix))
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        reference = torch.tensor([m + [0] * (width - len(m)) for m in refs])
        return ids, attention, reference

    def __call__(self, model: Any) -> Tensor:
        ids, attention, reference = self._rows()
        device = next(model.parameters()).device
        k, b = members_now(), ids.shape[0]
        ids, attention = ids.repeat(k, 1).to(device), attention.repeat(k, 1).to(device)  # (K·b, T)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]  # (K·b, T−1, V)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]  # (K·b, T−1)
        mask = reference[:, 1:].repeat(k, 1).to(logp)
        per_row = (logp * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (K·b,)
        return per_row.double().cpu().view(k, b)


class MultiReward:
    """A weighted sum ``Σ wᵢ rewardᵢ`` of rewards of one kind: all completion rewards (then it is one) or
    all model rewards (then it is a model reward: ``.batch``/``.tokenizer`` go to every part).

    Args:
        parts: ``[(reward, weight), ...]``; each reward is anything [`as_reward`][eggroll_trainer.llm.rewards.as_reward] takes.
    """

    def __init__(self, parts: Sequence[tuple[Any, float]]) -> None:
        try:
            self.parts = [(as_reward(r), float(w)) for r, w in parts]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Invalid MultiReward: expected [(reward, weight), ...] ({exc})") from None
        kinds = {isinstance(r, ModelReward) for r, _ in self.parts}
        if not self.parts or len(kinds) != 1:
            raise ValueError("Invalid MultiReward: needs parts, all completion rewards or all model rewards")
        self.is_model_reward = kinds == {True}

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("batch", "tokenizer"):
            for reward, _ in self.parts:
                setattr(reward, name, value)

    def __call__(self, *args: Any, **fields: Any) -> Any:
        if self.is_model_reward:
            outs = [w * torch.as_tensor(r(*args), dtype=torch.float64) for r, w in self.parts]
            if len({o.dim() for o in outs}) > 1:  # (K,) and (K, b) parts: compare member means
                outs = [member_means(o) for o in outs]
            return sum(outs)
        prompts, completions = args
        total = [0.0] * len(completions)
        for reward, weight in self.parts:
            values = _check_values(reward(prompts, completions, **fields), len(completions), "reward")
            total = [t + weight * v for t, v in zip(total, values)]
        return total


def is_model_reward(reward: Any) -> bool:
    """Whether ``reward`` is a fitness of the model (``reward(model)``) rather than of completions."""
    return isinstance(reward, ModelReward) or getattr(reward, "is_model_reward", False) is True


def reward_from_file(path: str | Path) -> Any:
    """The reward of a Python file: ``reward(prompts, completions, **fields)``, ``score(text)`` or
    ``reward_fn(model, inputs)`` (the first defined, in that order)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"eggroll_reward_{path.stem}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ValueError(f"Invalid reward: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, kind in (("reward", BatchReward), ("score", TextReward), ("reward_fn", CustomReward)):
        if callable(getattr(module, name, None)):
            return kind(getattr(module, name))
    raise ValueError(
        f"Invalid reward: {path} defines no function reward(prompts, completions, **fields), "
        "score(text) or reward_fn(model, inputs)"
    )


def as_reward(obj: Any) -> Any:
    """Any user reward as a completion reward ``(prompts, completions, **fields) -> list[float]`` or a
    [`ModelReward`][eggroll_trainer.llm.rewards.ModelReward].

    Accepts the reward classes of this module; ``"perplexity"``; a string ``"lambda ..."`` —
    **evaluated as Python**, one argument: a per-text score, more: the batch form; a ``.py`` file
    ([`reward_from_file`][eggroll_trainer.llm.rewards.reward_from_file]); or a function — one parameter:
    ``score(text)``, more: ``reward(prompts, completions, **fields)``.
    """
    if isinstance(obj, (BatchReward, TextReward, ModelReward, MultiReward)):
        return obj
    if isinstance(obj, (str, Path)):
        text = str(obj).strip()
        if text == "perplexity":
            return PerplexityReward()
        if text.startswith("lambda"):
            try:
                fn = eval(text, {"__builtins__": __builtins__})  # the user's own code, as documented
            except SyntaxError as exc:
                raise ValueError(f"Invalid reward: {text!r} is not a Python lambda ({exc.msg})") from None
            return as_reward(fn)
        if text.endswith(".py"):
            return reward_from_file(text)
        raise ValueError(f"Invalid reward: {text!r} (expected 'perplexity', 'lambda ...' or a .py file)")
    if callable(obj):
        try:
            positional = [
                p
                for p in inspect.signature(obj).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            ]
        except (TypeError, ValueError):  # a builtin without a signature: the batch form
            positional = [None, None]
        return TextReward(obj) if len(positional) == 1 else BatchReward(obj)
    raise ValueError(f"Invalid reward: {obj!r}")
