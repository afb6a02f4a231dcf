"""The MuJoCo example: every preset end to end on a tiny budget; the GIF.

The machinery: tests/test_rl.py, tests/test_presets.py, tests/test_render.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eggroll_trainer.rl.presets import PRESETS

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")  # the examples extra: pip install -e ".[examples]"

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "mujoco_agent.py"
COLUMNS = ["generation", "env_steps", "wall_time_s", "mean_return", "eval_return", "eval_min", "eval_max",
           "max_return", "mean_length", "eval_length", "steps_per_s", "generation_s", "worker_envs"]  # fmt: skip


def tiny_run_command(name: str, out: Path) -> list[str]:
    flags = ["--env-id", f"{name}-v5", "--output-dir", str(out), "--total-env-steps", "120"]
    flags += ["--population-size", "4", "--max-episode-steps", "15", "--calibration-s", "0.05"]
    flags += ["--eval-episodes", "2", "--center-episodes", "3", "--select-episodes", "2", "--keep-best", "2"]
    if name in ("HalfCheetah", "Hopper", "Swimmer"):
        flags += ["--gif", "--gif-seconds", "10"]
    return [sys.executable, str(SCRIPT), *flags]


# Swimmer's GIF is asked of a backend that does not exist: the run must say so and finish normally.
ENV = {"Swimmer": {"GIF_MUJOCO_GL": "no_such_backend"}}


@pytest.fixture(scope="module")
def preset_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every preset on a tiny budget, all at once: each run is mostly interpreter start-up, so running them
    side by side keeps both cores busy."""
    procs = {}
    for name in PRESETS:
        out = tmp_path_factory.mktemp(name)
        # Output to files, not pipes: nothing fills up while we wait on another run. The working
        # directory is the run's own: MuJoCo may write a MUJOCO_LOG.TXT there.
        with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
            env = {**os.environ, **ENV.get(name, {})}
            proc = subprocess.Popen(
                tiny_run_command(name, out), cwd=out, stdout=stdout, stderr=stderr, env=env
            )
        procs[name] = (proc, out)
    runs = {}
    for name, (proc, out) in procs.items():
        code = proc.wait(timeout=300)
        text = [(out / f).read_text() for f in ("stdout.txt", "stderr.txt")]
        runs[name] = (subprocess.CompletedProcess(proc.args, code, *text), out)
    return runs


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_runs_end_to_end(name: str, preset_runs: dict) -> None:
    proc, tmp_path = preset_runs[name]
    env_id = f"{name}-v5"
    assert proc.returncode == 0, proc.stderr[-3000:]
    for file in ("metrics.csv", "learning_curve.png", "policy.pt", "policy_last.pt", "summary.json"):
        assert (tmp_path / file).stat().st_size > 0, file

    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == COLUMNS  # benchmarks/mujoco_table.py and the docs read these
    assert [int(r["generation"]) for r in rows] == list(range(1, len(rows) + 1))
    steps = [int(r["env_steps"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] >= 120
    assert all(math.isfinite(float(r[c])) for r in rows for c in COLUMNS)
    assert all(1 <= int(r["eval_length"]) <= 15 for r in rows)
    assert all(float(r["eval_min"]) <= float(r["eval_return"]) <= float(r["eval_max"]) for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["env_steps"] == steps[-1] and summary["throughput_ratio"] > 0
    # the saved policy: the best mean over the same fresh episodes among the kept ones and the last one
    selection = summary["selection_mean"]
    assert len(summary["kept_eval_return"]) <= 2 and set(selection) == {*summary["kept_eval_return"], "last"}
    assert selection[summary["saved_policy"]] == max(selection.values())
    assert summary["final_eval_episodes"] == 2

    # The documented one-liner: plain torch layers, raw observation in, bounded action out.
    policy = torch.load(tmp_path / "policy.pt", weights_only=False)
    env = gym.make(env_id, **PRESETS[name].env_kwargs)
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        action = policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()
    assert action.shape == env.action_space.shape and env.action_space.contains(action.astype(np.float32))
    env.step(action)

    if name in ("HalfCheetah", "Hopper"):  # rendered where offscreen GL works; otherwise a clear message
        gif_file = tmp_path / "policy.gif"
        if "policy.gif not written" not in proc.stdout:
            frames, duration = gif_frames(gif_file)
            # one frame per env step on HalfCheetah (dt 0.05 s), every 5th on Hopper (dt 0.008 s): 40-50 ms
            assert frames == (15 if name == "HalfCheetah" else 3) and duration in (40, 50)
    if name == "Swimmer":
        assert "policy.gif not written" in proc.stdout and not (tmp_path / "policy.gif").exists()


def gif_frames(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.n_frames, image.info["duration"]


def test_flags_keep_their_names() -> None:
    """The flags `make demo`, the benchmarks and the docs use (tyro names dataclass fields --env-id)."""
    text = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--env-id", "--seed", "--time-budget", "--total-env-steps", "--gif", "--output-dir",
                 "--population-size", "--elite-k", "--hidden", "--max-episode-steps", "--num-workers"):  # fmt: skip
        assert flag in text, flag
