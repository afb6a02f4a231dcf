r"""Mixture-of-experts weights in population mode: ``grouped_mm`` and ``bmm`` on a stack P (E, m, n).

Hugging Face MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE) keep their experts as 3-D tensors and run them
through ``transformers.integrations.moe``: the ``"grouped_mm"`` implementation sorts the (token, expert) pairs
by expert and calls ``grouped_mm(x_sorted, Pᵀ, offs)``; ``"batched_mm"`` gathers ``P[expert_ids]`` and calls
``torch.bmm``. Each expert e of member i carries its own low-rank noise ``A_{k,e} B_{k,e}ᵀ/√r`` (an expert
stack's ``NoiseSpec``), so row s — a token of member i routed to expert e — gets

    y_s = x_s P_eᵀ + σ s_i (x_s B_{k,e}) A_{k,e}ᵀ/√r       (P_eᵀ: the layout Mixtral uses)
    y_s = x_s P_e  + σ s_i (x_s A_{k,e}) B_{k,e}ᵀ/√r       (``is_transposed`` experts)

the shared product plus, per row, the gather of that member's and expert's factors (r·(m + n) numbers):
nothing of size K·E·m·n exists. Full-rank noise (``VanillaESTrainer``) gathers ε per row instead (S·m·n, the
size of ``batched_mm``'s own ``P[expert_ids]``).

Which member owns a row: ``bmm`` keeps the rows member-major (token-major, ``top_k`` copies each). The sorted
rows of ``grouped_mm`` are not, so population mode watches every module holding an expert stack (a forward
pre-hook, ``watch_routing``): it keeps the module's member-major ``hidden_states`` and ``top_k_index``, and the
handler redoes the module's sort to map each sorted row to its token — checking the group offsets, and once
the rows themselves, against what the call received (a mismatch raises rather than mixing members).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .mode import population_mode

#: The grouped GEMMs of ``transformers.integrations.moe`` (whichever this torch has).
GROUPED_MM = {
    f for f in (getattr(F, "grouped_mm", None), getattr(torch, "_grouped_mm", None)) if f is not None
}
BMM = {torch.bmm, Tensor.bmm}


@dataclass
class Routing:
    """One experts-module call: member-major ``hidden`` (T, d) and ``index`` (T, top_k); the sort, once."""

    hidden: Tensor
    index: Tensor
    perm: Tensor | None = None
    checked: bool = False


def _is_stack(mode: population_mode, p: Tensor) -> bool:
    """A perturbed 3-D parameter of a module that is no convolution, with noise per expert (low rank: an
    expert stack's ``NoiseSpec``; full rank: ε of its shape)."""
    entry = mode.perturbed.get(id(p))
    return entry is not None and p.dim() == 3 and (entry.noise.spec.experts or not entry.noise.spec.low_rank)


def watch_routing(mode: population_mode) -> list[Any]:
    """Forward pre-hooks on every module that holds a perturbed expert stack as a direct parameter: each call
    records its routing for the stack's ``grouped_mm`` (the handles, to remove on exit)."""
    handles: list[Any] = []
    if not any(len(entry.noise.spec.shape) == 3 for entry in mode.perturbed.values()):
        return handles  # no stack: no walk over the modules (population mode is entered every RL step)
    for module in mode.model.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            continue
        stacks = [id(p) for p in module._parameters.values() if p is not None and _is_stack(mode, p)]
        if not stacks:
            continue
        for pid in stacks:
            mode.cache.expert_stacks.add(pid)

        def record(module: Any, args: tuple, kwargs: dict, stacks: list[int] = stacks) -> None:
            values = list(args) + [kwargs.get(key) for key in ("hidden_states", "top_k_index")]
            tensors = [v for v in values if isinstance(v, Tensor)]
            if len(tensors) >= 2 and not tensors[1].is_floating_point():
                routing = Routing(tensors[0], tensors[1])
                for pid in stacks:
                    mode.cache.routings[pid] = routing

        handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
    return handles


def _stack_of(mode: population_mode, weight: Tensor) -> tuple[Tensor, bool] | None:
    """(P, transposed): the perturbed expert stack ``weight`` is (``P`` itself, or its ``transpose(-2, -1)``
    view — recognised by storage and strides), or ``None``."""
    if id(weight) in mode.cache.expert_stacks:
        return weight, False
    record = mode.derived.get(id(weight))
    if record is None or len(record[1]) != 1:
        return None
    stack = record[1][0]
    if id(stack) not in mode.cache.expert_stacks or weight.dim() != 3:
        return None
    transposed = (
        weight.data_ptr() == stack.data_ptr()
        and weight.shape == (stack.shape[0], stack.shape[2], stack.shape[1])
        and weight.stride() == (stack.stride(0), stack.stride(2), stack.stride(1))
    )
    return (stack, True) if transposed else None


def _delta(
    mode: population_mode, stack: Tensor, x: Tensor, member: Tensor, expert: Tensor, transposed: bool
) -> Tensor:
    """Each row's noise term, (S, out): x (S, in) of member ``member[s]`` through expert ``expert[s]``."""
    entry = mode.perturbed[id(stack)]
    noise, sl = entry.noise, mode.slice
    pairs, signs = sl.members  # (K,), (K,)
    pair = pairs[member]  # (S,)
    if noise.spec.low_rank:
        a_t, b_t = noise.factors_t(0, sl.pair_end)  # (P, E, r, m), (P, E, r, n)
        a_sel, b_sel = a_t[pair, expert], b_t[pair, expert]  # (S, r, m), (S, r, n)
        into, out_of = (
            (b_sel, a_sel) if transposed else (a_sel, b_sel)
        )  # y = x Pᵀ: (x B) Aᵀ; y = x P: (x A) Bᵀ
        t = torch.bmm(into, x.unsqueeze(-1))  # (S, r, 1)
        delta = torch.bmm(t.transpose(1, 2), out_of).squeeze(1)  # (S, out)
        scale = entry.sigma / math.sqrt(noise.spec.rank)
    else:
        eps = noise.full(0, sl.pair_end)[pair, expert]  # (S, m, n)
        delta = torch.bmm(x.unsqueeze(1), eps.transpose(1, 2) if transposed else eps).squeeze(1)
        scale = entry.sigma
    mode.seen.add(id(stack))
    return delta * (signs[member].to(delta.dtype) * scale).unsqueeze(-1)


def grouped_mm(mode: population_mode, func: Any, args: tuple, kwargs: dict) -> Tensor | None:
    """``grouped_mm(x_sorted, P or Pᵀ, offs=offs)`` for every member; ``None`` if this is no such call."""
    names = ("input", "mat_b", "offs")
    call = dict(zip(names, args)) | kwargs
    x, weight, offs = call.get("input", call.get("mat_a")), call.get("mat_b"), call.get("offs")
    extra = {k: v for k, v in call.items() if k not in ("input", "mat_a", "mat_b", "offs") and v is not None}
    found = _stack_of(mode, weight) if isinstance(weight, Tensor) else None
    if found is None or offs is None or extra or x.dim() != 2:
        return None
    stack, transposed = found
    routing = mode.cache.routings.get(id(stack))
    what = f"population mode: grouped_mm on the expert weights {mode.name(stack)}"
    if routing is None:
        raise ValueError(f"{what} outside the forward of the module that holds them: no routing to read")
    flat = routing.index.reshape(-1)  # (S,) expert of each (token, slot), token-major
    if routing.perm is None:
        routing.perm = torch.sort(flat)[1]  # the module's own sort (transformers.integrations.moe)
    perm, top_k = routing.perm, routing.index.shape[-1]
    counts = torch.bincount(flat, minlength=stack.shape[0]).cumsum(0)
    if x.shape[0] != flat.numel() or not torch.equal(counts.to(offs.dtype), offs):
        raise ValueError(f"{what}: its rows are not the module's (token, expert) pairs sorted by expert")
    token = perm // top_k  # (S,) token of each sorted row
    if not routing.checked and x.shape[-1] == routing.hidden.shape[-1]:
        if not torch.equal(x, routing.hidden[token].to(x.dtype)):
            raise ValueError(f"{what}: its rows are not the module's tokens in the order of its sort")
        routing.checked = True
    k = mode.info.size
    if routing.hidden.shape[0] % k:
        raise ValueError(f"{what}: {routing.hidden.shape[0]} tokens do not split into {k} members")
    y = func(x, weight, offs=offs)  # (S, out): the shared product
    return y.add_(_delta(mode, stack, x, token // (routing.hidden.shape[0] // k), flat[perm], transposed))


def expert_bmm(mode: population_mode, args: tuple, kwargs: dict) -> Tensor | None:
    """``torch.bmm(P[ids], x)`` (y_s = P_e x_s) or ``torch.bmm(x, P[ids])`` (y_s = x_s P_e) with member-major
    rows (``batched_mm``); ``None`` if this is no such call."""
    if len(args) != 2 or kwargs:
        return None
    for w_pos in (0, 1):
        record = mode.derived.get(id(args[w_pos]))
        recipe = record[3] if record is not None else None
        if recipe is None or recipe[0] is not Tensor.__getitem__ or recipe[2] or len(recipe[1]) != 2:
            continue
        stack, ids = recipe[1]
        if id(stack) not in mode.cache.expert_stacks or not isinstance(ids, Tensor) or ids.dim() != 1:
            continue
        x = args[1 - w_pos]
        s, k = x.shape[0], mode.info.size
        if ids.is_floating_point() or ids.numel() != s or s % k:
            return None
        rows = x.reshape(s, -1)  # (S, in): x (S, in, 1) or (S, 1, in)
        y = torch.bmm(*args)  # (S, out, 1) or (S, 1, out): the shared product
        member = torch.arange(s, device=x.device) // (s // k)
        return y.add_(_delta(mode, stack, rows, member, ids, transposed=w_pos == 0).view(y.shape))
    return None


def refuse_one_expert(mode: population_mode, args: tuple, kwargs: dict) -> None:
    """Raise ``ValueError`` for a call on one expert ``P[e]`` of a stack (the ``"eager"`` experts loop): its rows
    are the tokens routed to e, gathered in the module, so which member owns a row is unknown."""
    for a in (*args, *kwargs.values()):
        record = mode.derived.get(id(a)) if isinstance(a, Tensor) else None
        recipe = record[3] if record is not None else None
        if recipe is None or recipe[0] is not Tensor.__getitem__ or not recipe[1]:
            continue
        stack, index = recipe[1][0], recipe[1][1] if len(recipe[1]) > 1 else None
        one = isinstance(index, int) or (isinstance(index, Tensor) and index.dim() == 0)
        if id(stack) in mode.cache.routings and one:  # its module was called with a routing
            raise ValueError(
                f"population mode: one expert of {mode.name(stack)} is used on rows gathered by the routing (the "
                "'eager' experts loop), so the rows' members are unknown; set "
                "model.config._experts_implementation = 'grouped_mm' (or 'batched_mm'), or use sequential "
                "evaluation (batched=False)"
            )


__all__ = ["GROUPED_MM", "BMM", "Routing", "watch_routing", "grouped_mm", "expert_bmm", "refuse_one_expert"]
