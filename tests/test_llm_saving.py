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


@pytest.mark.smollm2
def test_eggroll_tune_on_the_real_model_saves_what_info_and_from_pretrained_reload(tmp_path: Path) -> None:
    """The documented run, shrunk: one generation of SmolLM2-135M, then the saved folder is reloaded."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    from eggroll_trainer.llm.cli import main

    (tmp_path / "prompts.txt").write_text("Say yes.\nSay no.\n")
    out = tmp_path / "out"
    code = main([
        "tune", "smollm2", "--reward", "lambda text: float('yes' in text.lower())", "--prompts",
        str(tmp_path / "prompts.txt"), "--generations", "1", "--population", "2", "--prompts-per-step", "1",
        "--max-new-tokens", "2", "--target-modules", "q_proj", "--adapter-rank", "2", "--output", str(out), "--quiet",
    ])  # fmt: skip
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["generations"] == 1
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(out / "model")
    assert sum(p.numel() for p in again.parameters()) == 134_515_008
    info = subprocess.run([sys.executable, "-m", "eggroll_trainer.llm.cli", "info", str(out / "model")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert info.returncode == 0, info.stderr[-2000:]
    assert "134,515,008 parameters" in info.stdout
