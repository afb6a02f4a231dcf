"""A tuned model from any source saves as plain safetensors that ``from_pretrained`` loads again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_hf import build_tiny_llama

from eggroll_trainer.llm.models import load_causal_lm, save_model


def test_saved_folder_reloads_with_from_pretrained(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model, tok = load_causal_lm(str(build_tiny_llama(tmp_path / "tiny")))
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.add_(0.25)  # "tuned"
    save_model(model, tok, tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.smollm2
def test_gguf_loaded_model_saves_as_plain_safetensors(tmp_path: Path) -> None:
    """transformers >= 5 refuses ``save_pretrained`` of a GGUF-loaded (quantisation-marked) model."""
    from transformers import AutoModelForCausalLM

    model, tok = load_causal_lm("smollm2")
    with torch.no_grad():
        model.model.layers[3].mlp.down_proj.weight.mul_(1.01)
    save_model(model, tok, tmp_path / "saved")
    assert model.hf_quantizer is not None  # the loaded model is left as it was
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in config
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    ids = tok(["The capital of France is"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
