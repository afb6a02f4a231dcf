"""How much memory a language-model generation holds, by component, before running it
([`generation_memory`][eggroll_trainer.llm.memory.generation_memory]; ``eggroll info`` prints it)."""

from __future__ import annotations

from typing import Any

from ..noise.params import num_pairs
from ..noise.table import default_table_size

__all__ = ["generation_memory"]


def generation_memory(
    model: Any,
    targets: Any,
    members: int,
    rank: int,
    prompts: int,
    prompt_tokens: int,
    new_tokens: int,
    optimizer: str = "sgd",
    track_best: bool = False,
) -> dict[str, int]:
    """Estimated bytes one generation holds (population mode, activations in the weights' dtype), by component.

    Nothing scales with members × weight size: a member's perturbation is rank-r factors read from the
    shared noise table. What grows with the K·P rows is the KV cache, the prefill activations and the
    logits. The trainer itself keeps θ₀ (for ``reset``, on the CPU), the best member only with
    ``track_best`` (``eggroll tune`` runs without), the update rule's moments (two per parameter for
    Adam/AdamW) and, during the update, ĝ of every perturbed matrix — what ``trainer.trainer_memory()``
    reports once a run is under way.

    Args:
        model: a Hugging Face causal LM (its ``config`` gives layers, heads, widths, vocabulary).
        targets: the perturbed matrices ([`select_targets`][eggroll_trainer.llm.models.select_targets]).
        members: K, members per ``generate`` call (the chunk size, or N).
        rank: r.
        prompts: P, the prompts every member answers.
        prompt_tokens: tokens in a (padded) prompt.
        new_tokens: tokens decoded per row.
        optimizer: the update rule (``"adam"``/``"adamw"`` add two moments per perturbed parameter).
        track_best: whether the trainer keeps the best member (one more copy of the perturbed weights).
    """
    cfg = model.config
    size = next(iter(model.parameters())).element_size()
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 1)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    vocab = getattr(cfg, "vocab_size", 1)
    rows, tokens = members * prompts, prompt_tokens + new_tokens
    unique = {id(t): t for t in list(model.parameters()) + list(model.buffers())}.values()
    trained = targets.numel * size
    lengths = [(p.shape[0] + p.shape[1]) * rank for p in targets.params]
    table = default_table_size(lengths, num_pairs(members, True)) * size
    memory = {
        "weights": sum(t.numel() * t.element_size() for t in unique),
        "trainer: theta_0 (CPU)": trained,
        "trainer: best member": trained if track_best else 0,
        "trainer: update-rule moments": 2 * trained if optimizer in ("adam", "adamw") else 0,
        "update: ES estimate": trained,
        "noise table (shared)": table,
        "KV cache": 2 * layers * rows * tokens * kv_heads * head_dim * size,
        "prefill activations": rows * prompt_tokens * (4 * hidden + 3 * inner) * size,
        "logits (last token)": 2 * rows * vocab * size,
    }
    memory["total (estimate)"] = sum(memory.values())
    return memory
