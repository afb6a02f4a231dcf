"""The ``eggroll`` command line end to end on a tiny random-init Llama (seconds; nothing is downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_hf import build_tiny_llama

from eggroll_trainer.llm.cli import main, read_prompts
from eggroll_trainer.llm.models import load_causal_lm

REWARD = """
def reward(prompts, completions):
    return [float(sum(map(ord, c)) % 97) for c in completions]  # arbitrary, but it differs between members
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "reward.py").write_text(REWARD)
    (tmp_path / "prompts.txt").write_text("12+34=\n5+6=\n\n77+8=\n")
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in ("1+1=", "2+2="))
    )
    return {
        "reward": tmp_path / "reward.py",
        "txt": tmp_path / "prompts.txt",
        "jsonl": tmp_path / "prompts.jsonl",
    }


def tune(tiny: Path, files: dict[str, Path], out: Path, *extra: str) -> int:
    return main([
        "tune", str(tiny), "--reward", str(files["reward"]), "--prompts", str(files["txt"]), "--population", "4",
        "--generations", "2", "--prompts-per-step", "2", "--max-new-tokens", "3", "--sigma", "0.5", "--lr", "0.05",
        "--output", str(out), *extra,
    ])  # fmt: skip


def test_tune_saves_model_adapter_and_metrics(tiny: Path, files: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel

    out = tmp_path / "run"
    assert tune(tiny, files, out, "--target-modules", "q_proj", "v_proj", "--adapter-rank", "8") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["generation"] for x in lines] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["perturbed"] == [
        f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")
    ]
    assert summary["adapter_max_relative_error"] < 1e-5  # 2 generations of 2 pairs: ΔW has rank ≤ 4 < 8
    tuned, _ = load_causal_lm(str(out / "model"))
    base, _ = load_causal_lm(str(tiny))
    tokens = torch.tensor([[4, 5, 13, 6]])
    with torch.no_grad():
        want = tuned(input_ids=tokens).logits
        assert not torch.allclose(base(input_ids=tokens).logits, want)  # it moved
        got = PeftModel.from_pretrained(base, str(out / "adapter"))(input_ids=tokens).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_tune_sequential_equals_batched(tiny: Path, files: dict[str, Path], tmp_path: Path) -> None:
    assert tune(tiny, files, tmp_path / "a", "--adapter-rank", "0") == 0
    assert tune(tiny, files, tmp_path / "b", "--adapter-rank", "0", "--sequential") == 0
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["mean_fitness"] for x in a] == [x["mean_fitness"] for x in b]


def test_info_prints_counts_and_memory(tiny: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eggroll_trainer.llm.cli", "info", str(tiny), "--population", "8", "--rank", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "perturbed: 14 matrices" in proc.stdout
    assert "KV cache" in proc.stdout and "MiB" in proc.stdout


def test_prompt_files_and_bad_input(tiny: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert read_prompts(files["txt"]) == ["12+34=", "5+6=", "77+8="]
    assert read_prompts(files["jsonl"]) == ["1+1=", "2+2="]
    (tmp_path / "bad.py").write_text("x = 1\n")
    assert tune(tiny, {**files, "reward": tmp_path / "bad.py"}, tmp_path / "o") == 2
    assert "defines no function reward" in capsys.readouterr().err
    assert tune(tiny, files, tmp_path / "o", "--target-modules", "nope") == 2
    assert "match no" in capsys.readouterr().err
