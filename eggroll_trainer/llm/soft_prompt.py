r"""Prompt tuning: n learned virtual tokens in front of every prompt, evolved by ES (Lester et al., 2021).

A [`SoftPromptLM`][eggroll_trainer.llm.soft_prompt.SoftPromptLM] wraps a causal LM and holds one matrix
P (n × d): the embeddings of n virtual tokens. Every row of a batch becomes

    [P₁ … Pₙ | embed(input_ids)]        attention mask [1 … 1 | mask]

(in front of the left padding, as PEFT's prompt tuning lays it out), and the model's weights are left as they
are. ES perturbs P alone: n·d numbers (8 × 576 = 4,608 for SmolLM2-135M) instead of the 106 M of the
model's linear layers, so the 16 pairs of directions a generation explore a far smaller space.

**Population mode.** The prefix is a lookup ``F.embedding(arange(n), P)`` with one row of ids per member
(``forward``: per batch row): in a trainer step each member gets its own P + σ s_i A_i B_iᵀ/√r (the population
embedding handler), and everything after the prefix runs on the shared weights. ``generate`` therefore still
makes one call for the whole population.

**The prefix is computed once a member.** Every row of a member starts with the same n embeddings, so
``generate`` runs the model on the K members' prefixes alone (K·n tokens), repeats each member's KV cache for
its b rows, and decodes the prompts behind it: K·n + K·b·T prefill tokens instead of K·b·(n + T). The
positions are those of the whole sequence (``cache_prefix=False`` decodes the concatenation directly; the
tests check both give the same tokens).

**Saving.** [`save_soft_prompt`][eggroll_trainer.llm.soft_prompt.save_soft_prompt] writes a PEFT
prompt-tuning adapter: ``PeftModel.from_pretrained(base_model, directory)`` answers as the wrapper does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fitness import members_now
from .models import Targets

#: σ and the lr of plain SGD for a soft prompt: its entries are token embeddings (RMS 0.14 in SmolLM2-135M),
#: so σ is ~20× the weights' 5e-3; the lr keeps RMS(Δθ)/σ ≈ lr/(σ²√N) near 0.7 at N = 32.
SOFT_PROMPT_SIGMA = 0.1
SOFT_PROMPT_LR = 4e-2
#: σ and lr for the weights of all linear layers (calibrated in ``benchmarks/llm_sigma.py``; same step ratio).
WEIGHTS_SIGMA = 5e-3
WEIGHTS_LR = 1e-4


def recipe_defaults(soft_prompt: int) -> tuple[float, float]:
    """``(σ, lr)`` of the measured recipe: for a soft prompt (``soft_prompt > 0`` tokens) or for the weights."""
    return (SOFT_PROMPT_SIGMA, SOFT_PROMPT_LR) if soft_prompt else (WEIGHTS_SIGMA, WEIGHTS_LR)


class SoftPromptLM(nn.Module):
    """A causal LM with ``num_virtual_tokens`` learned embeddings in front of every prompt.

    Args:
        model: a Hugging Face causal LM (its weights are not changed).
        num_virtual_tokens: n, the prefix length.
        init: ``"vocab"`` (the embeddings of n tokens drawn from the vocabulary, PEFT's ``SAMPLE_VOCAB``), or a
            text whose token embeddings start the prefix (repeated to n tokens, PEFT's ``TEXT``).
        tokenizer: needed for a text ``init``.
        seed: seed of the ``"vocab"`` draw.
        cache_prefix: ``generate`` computes each member's prefix once and reuses its KV cache for the
            member's rows (else it decodes ``[prefix | prompt]`` for every row).

    ``forward`` returns the model's output with the prefix's positions removed from ``logits`` (so
    ``logits[:, t]`` still belongs to ``input_ids[:, t]``); ``generate`` returns ``input_ids`` followed by the new
    tokens, as the wrapped model's ``generate`` does.
    """

    def __init__(
        self,
        model: nn.Module,
        num_virtual_tokens: int,
        *,
        init: str = "vocab",
        tokenizer: Any = None,
        seed: int = 0,
        cache_prefix: bool = True,
    ) -> None:
        super().__init__()
        if num_virtual_tokens < 1:
            raise ValueError(f"Invalid num_virtual_tokens: {num_virtual_tokens} (at least 1)")
        self.model = model
        self.cache_prefix = cache_prefix
        table = model.get_input_embeddings().weight  # (V, d)
        n = int(num_virtual_tokens)
        if init == "vocab":
            generator = torch.Generator().manual_seed(seed)
            ids = torch.randint(table.shape[0], (n,), generator=generator)
        else:
            if tokenizer is None:
                raise ValueError("SoftPromptLM: a text init needs the tokenizer")
            text_ids = tokenizer(init, add_special_tokens=False)["input_ids"]
            if not text_ids:
                raise ValueError(f"SoftPromptLM: init text {init!r} has no tokens")
            ids = torch.tensor(text_ids * (n // len(text_ids) + 1))[:n]
        self.prompt = nn.Parameter(table.detach()[ids.to(table.device)].clone())  # (n, d)

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.shape[0]

    @property
    def config(self) -> Any:
        return self.model.config

    def prefix(self, rows: int) -> Tensor:
        """``(rows, n, d)``: P for every row, one row of ids ``arange(n)`` each — so in population mode each
        member's rows get its own P + σ s_i A_i B_iᵀ/√r (rows = K·b, or K: one a member)."""
        n = self.num_virtual_tokens
        positions = torch.arange(n, device=self.prompt.device).expand(rows, n)
        embeds = F.embedding(positions, self.prompt)
        return embeds.to(self.model.get_input_embeddings().weight.dtype)

    def prefixed_mask(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """``(R, n + T)``: ones for the prefix, then the prompt's mask (ones when ``None``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ones = attention_mask.new_ones(input_ids.shape[0], self.num_virtual_tokens)
        return torch.cat([ones, attention_mask], dim=1)

    def prefixed(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """``inputs_embeds (R, n + T, d)`` and ``attention_mask (R, n + T)`` of ``input_ids (R, T)``."""
        tokens = self.model.get_input_embeddings()(input_ids)  # (R, T, d)
        embeds = torch.cat([self.prefix(input_ids.shape[0]), tokens], dim=1)
        return embeds, self.prefixed_mask(input_ids, attention_mask)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The model's output for ``input_ids (R, T)`` behind the prefix; ``logits (R, T, V)``."""
        embeds, mask = self.prefixed(input_ids, attention_mask)
        if position_ids is not None:  # the prefix takes positions 0 … n−1; the prompt's move up by n
            n = self.num_virtual_tokens
            head = torch.arange(n, device=position_ids.device).expand(position_ids.shape[0], n)
            position_ids = torch.cat([head, position_ids + n], dim=1)
        if kwargs.get("labels") is not None:  # the prefix predicts nothing: -100 is ignored by the loss
            labels = kwargs["labels"]
            ignore = torch.full((labels.shape[0], self.num_virtual_tokens), -100, dtype=labels.dtype)
            kwargs["labels"] = torch.cat([ignore.to(labels.device), labels], dim=1)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, **kwargs)
        out.logits = out.logits[:, self.num_virtual_tokens :]
        return out

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        """``(R, T + T_new)``: ``input_ids`` and the new tokens, decoded behind the prefix.

        In population mode R = K·b rows, member-major (K = 1 outside it)."""
        if not self.cache_prefix or "past_key_values" in kwargs or "cache" in kwargs:
            embeds, mask = self.prefixed(input_ids, attention_mask)
            new = self.model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)  # (R, T_new)
            return torch.cat([input_ids, new], dim=1)
        rows, n = input_ids.shape[0], self.num_virtual_tokens
        k = members_now()
        if rows % k:
            raise ValueError(
                f"SoftPromptLM.generate: {rows} rows for {k} members (member-major, b rows each)"
            )
        prefill = self.model(inputs_embeds=self.prefix(k), use_cache=True)  # K·n tokens: one prefix a member
        name = "cache" if "cache" in prefill else "past_key_values"  # (transformers 5.2x renamed it `cache`)
        cache = prefill[name]
        cache.batch_repeat_interleave(rows // k)  # (K·b, ..., n, ...): each member's prefix for its b rows
        # n placeholder ids stand for the cached prefix: generate decodes only what the cache does not hold
        placeholder = input_ids[:, :1].expand(rows, n)
        out = self.model.generate(
            input_ids=torch.cat([placeholder, input_ids], dim=1),
            attention_mask=self.prefixed_mask(input_ids, attention_mask),
            **{name: cache},
            **kwargs,
        )  # (R, n + T + T_new)
        return out[:, n:]


def soft_prompt_targets(wrapper: SoftPromptLM) -> Targets:
    """The prefix as the one matrix ES perturbs (what ``select_targets`` returns for a model's layers)."""
    return Targets(names=["soft_prompt"], modules=[wrapper], params=[wrapper.prompt])


def save_soft_prompt(wrapper: SoftPromptLM, directory: str | Path, base_model_name_or_path: str = "") -> Path:
    """Write the prefix as a PEFT prompt-tuning adapter (``adapter_config.json``, ``adapter_model.safetensors``).

    Load it with ``PeftModel.from_pretrained(base_model, directory)``."""
    from peft import PromptTuningConfig, get_peft_model

    directory = Path(directory)
    config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=wrapper.num_virtual_tokens,
        base_model_name_or_path=base_model_name_or_path or None,
    )
    peft_model = get_peft_model(wrapper.model, config)  # prompt tuning adds no layers to the model
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(wrapper.prompt)
    peft_model.save_pretrained(directory)
    return directory
