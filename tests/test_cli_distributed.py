"""``eggroll tune`` under ``torchrun``: the population sharded over 2 gloo ranks ends with the weights of the
one-process run (every rank regenerates every member's noise; only the scores cross)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_hf import build_tiny_llama

from eggroll_trainer.llm.cli import main

ROOT = Path(__file__).resolve().parent.parent
REWARD = "lambda prompts, completions: [float(sum(map(ord, c)) % 97) for c in completions]"


def run(launch: list[str] | None, tiny: Path, prompts: Path, out: Path, *extra: str) -> None:
    """``eggroll tune`` in this process (``launch=None``) or under ``launch``."""
    flags = [
        "tune", str(tiny), "--reward", REWARD, "--prompts", str(prompts), "--population", "6", "--generations", "2",
        "--prompts-per-step", "2", "--max-new-tokens", "3", "--sigma", "0.5", "--lr", "0.05", "--adapter-rank", "0",
        "--optimizer", "adam", "--output", str(out), "--quiet", *extra,
    ]  # fmt: skip
    if launch is None:
        assert main(flags) == 0
        return
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    done = subprocess.run([*launch, "-m", "eggroll_trainer.llm.cli", *flags], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("scale", ["none", "std"])
def test_two_ranks_give_the_weights_of_one_process(tmp_path: Path, scale: str) -> None:
    tiny = build_tiny_llama(tmp_path / "tiny")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("12+34=\n5+6=\n77+8=\n")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run(None, tiny, prompts, tmp_path / "one", "--scale", scale)
    run(torchrun, tiny, prompts, tmp_path / "two", "--scale", scale)  # 3 members a rank: pair 1 is split
    one, two = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("one", "two"))
    assert all(torch.equal(one[k], two[k]) for k in one)
    metrics = [[json.loads(x)["mean_reward"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
               for d in ("one", "two")]  # fmt: skip
    assert metrics[0] == metrics[1] and len(metrics[0]) == 2
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
