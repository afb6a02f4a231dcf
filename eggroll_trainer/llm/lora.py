"""The evolved weights of a Hugging Face model as a PEFT LoRA adapter.

[`export_lora`][eggroll_trainer.llm.lora.export_lora] writes $\\Delta W = W - W_0$ of every targeted matrix as a
LoRA adapter by truncated SVD: $\\Delta W \\approx U_r S_r V_r^\\top = B A$ with $B = U_r S_r^{1/2}$ (out×r),
$A = S_r^{1/2} V_r^\\top$ (r×in) and ``lora_alpha = r`` (scaling 1). By Eckart–Young the error is
$\\|\\Delta W - BA\\|_F = (\\sum_{j>r} s_j^2)^{1/2}$: zero at full rank. A run of G generations of N rank-1
members moves each matrix by a sum of at most G·N/2 rank-1 terms, so its ΔW is exactly representable at
that rank.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .models import _is_conv1d

__all__ = ["lora_factors", "export_lora"]


def lora_factors(delta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(B, A)`` with ``B @ A`` the best rank-``rank`` approximation of ``delta`` (out, in); B (out, r),
    A (r, in). A rank above ``min(out, in)`` is padded with zeros (so the product stays exact)."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"Invalid rank: {rank!r}")
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)  # (out, k), (k,), (k, in)
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    b = delta.new_zeros(delta.shape[0], rank, dtype=torch.float64)
    a = delta.new_zeros(rank, delta.shape[1], dtype=torch.float64)
    b[:, :keep] = u[:, :keep] * root
    a[:keep] = root[:, None] * vh[:keep]
    return b.to(delta.dtype), a.to(delta.dtype)


def export_lora(
    model: nn.Module,
    base: Mapping[str, Tensor],
    directory: str | Path,
    rank: int,
    base_model_name_or_path: str | None = None,
) -> dict[str, float]:
    """Write ΔW = W − ``base`` of each module in ``base`` as a PEFT LoRA adapter in ``directory``.

    ``directory`` gets ``adapter_config.json`` and ``adapter_model.safetensors``;
    ``peft.PeftModel.from_pretrained(base_model, directory)`` then computes base + B A for every module.

    Args:
        model: the evolved model.
        base: ``{module name: W₀}``, e.g. ``select_targets(model).snapshot()`` taken before training.
        directory: output folder (created).
        rank: LoRA rank r (the same for every module; padded with zeros where a matrix is smaller).
        base_model_name_or_path: recorded in the adapter config.

    Returns:
        ``{module name: relative truncation error ‖ΔW − BA‖_F / ‖ΔW‖_F}`` (0 when ΔW = 0).
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    modules = dict(model.named_modules())
    kinds = set()
    tensors: dict[str, Tensor] = {}
    errors: dict[str, float] = {}
    for name, w0 in base.items():
        module = modules.get(name)
        if module is None or not (isinstance(module, nn.Linear) or _is_conv1d(module)):
            raise ValueError(
                f"Invalid base: {name!r} is not a linear module of the model (LoRA export needs one)"
            )
        kinds.add(_is_conv1d(module))
        delta = module.weight.detach() - w0.to(module.weight)
        delta = delta.T if _is_conv1d(module) else delta  # (out, in)
        b, a = lora_factors(delta, rank)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
        norm = float(delta.norm())
        errors[name] = float((delta - b @ a).norm()) / norm if norm > 0 else 0.0
    if len(kinds) > 1:
        raise ValueError("Invalid base: mixes nn.Linear and Conv1D modules (one fan_in_fan_out per adapter)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=sorted(base), lora_dropout=0.0, bias="none",
        fan_in_fan_out=kinds == {True}, task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
    )  # fmt: skip
    config.save_pretrained(str(directory))
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "truncation_error.json").write_text(json.dumps(errors, indent=1))
    return errors
