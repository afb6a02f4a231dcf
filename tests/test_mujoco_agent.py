"""The MuJoCo example: every preset end to end on a tiny budget; the observation normaliser; masking."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")  # the examples extra: pip install -e ".[examples]"

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "mujoco_agent.py"


def load_example():
    spec = importlib.util.spec_from_file_location("mujoco_agent", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mujoco_agent"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


agent = load_example()
COLUMNS = ["generation", "env_steps", "wall_time_s", "mean_return", "eval_return", "steps_per_s"]


def tiny_run_command(name: str, out: Path) -> list[str]:
    flags = ["--env-id", f"{name}-v5", "--output-dir", str(out), "--total-env-steps", "120"]
    flags += ["--population-size", "4", "--max-episode-steps", "15", "--calibration-s", "0.05"]
    flags += ["--eval-episodes", "2"]
    if name == "HalfCheetah":
        flags += ["--gif", "--gif-steps", "6"]
    return [sys.executable, str(SCRIPT), *flags]


@pytest.fixture(scope="module")
def preset_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every preset on a tiny budget, all at once: each run is mostly interpreter start-up, so running them
    side by side keeps both cores busy."""
    procs = {}
    for name in agent.PRESETS:
        out = tmp_path_factory.mktemp(name)
        # Output to files, not pipes: nothing fills up while we wait on another run. The working
        # directory is the run's own: MuJoCo may write a MUJOCO_LOG.TXT there.
        with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
            proc = subprocess.Popen(tiny_run_command(name, out), cwd=out, stdout=stdout, stderr=stderr)
        procs[name] = (proc, out)
    runs = {}
    for name, (proc, out) in procs.items():
        code = proc.wait(timeout=300)
        text = [(out / f).read_text() for f in ("stdout.txt", "stderr.txt")]
        runs[name] = (subprocess.CompletedProcess(proc.args, code, *text), out)
    return runs


@pytest.mark.parametrize("name", list(agent.PRESETS))
def test_preset_runs_end_to_end(name: str, preset_runs: dict) -> None:
    proc, tmp_path = preset_runs[name]
    env_id = f"{name}-v5"
    assert proc.returncode == 0, proc.stderr[-3000:]
    for file in ("metrics.csv", "learning_curve.png", "policy.pt", "summary.json"):
        assert (tmp_path / file).stat().st_size > 0, file

    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(COLUMNS) <= set(rows[0])
    assert [int(r["generation"]) for r in rows] == list(range(1, len(rows) + 1))
    steps = [int(r["env_steps"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] >= 120
    assert all(math.isfinite(float(r[c])) for r in rows for c in COLUMNS)
    assert all(1 <= int(r["eval_length"]) <= 15 for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["env_steps"] == steps[-1] and summary["throughput_ratio"] > 0

    # The documented one-liner: plain torch layers, raw observation in, bounded action out.
    policy = torch.load(tmp_path / "policy.pt", weights_only=False)
    env = gym.make(env_id, **agent.preset_for(env_id).env_kwargs)
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        action = policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()
    assert action.shape == env.action_space.shape and env.action_space.contains(action.astype(np.float32))
    env.step(action)

    if name == "HalfCheetah":  # rendered where offscreen GL works; otherwise a clear message, never a crash
        gif_file = tmp_path / "policy.gif"
        assert (
            gif_file.exists() and gif_file.read_bytes()[:4] == b"GIF8"
        ) or "policy.gif not written" in proc.stdout


def test_running_mean_std_merges_batches_exactly() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(rows, 4)) for rows in (5, 1, 40, 7)]
    stats = agent.RunningMeanStd(4)
    stats.update(0, np.zeros(4), np.zeros(4))  # an empty batch changes nothing
    for b in batches:
        stats.update(len(b), b.sum(0), np.square(b).sum(0))
    every = np.concatenate(batches)
    assert stats.count == len(every)
    np.testing.assert_allclose(stats.mean, every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, every.std(0), rtol=1e-9)

    constant = agent.RunningMeanStd(2, std_floor=1e-2)
    constant.update(3, np.array([3.0, -6.0]), np.array([3.0, 12.0]))  # three rows of (1, -2)
    np.testing.assert_allclose(constant.mean, [1.0, -2.0])
    np.testing.assert_allclose(constant.std, [1e-2, 1e-2])  # floored, not 0


def test_policy_normalises_clips_and_stays_frozen_between_updates() -> None:
    policy = agent.make_policy(obs_dim=3, act_dim=2, act_low=-0.4, act_high=0.4, obs_clip=5.0)
    assert [p.requires_grad for p in policy.normalise.parameters()] == [False, False]
    assert not policy.linear.weight.any()  # zero-initialised: the first center policy does nothing
    mean, std = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 1e-2])
    agent.set_normaliser(policy, mean, std)
    with torch.no_grad():
        policy.linear.weight.copy_(torch.tensor([[0.1, -0.2, 0.3], [1.0, 1.0, 1.0]]))
        policy.linear.bias.copy_(torch.tensor([0.05, 0.0]))
    obs = np.array([[3.0, -2.5, 0.8], [1.0, -2.0, 0.5]])
    x = np.clip((obs - mean) / std, -5.0, 5.0)  # the third entry of row 0 is 30: clipped to 5
    expected = np.clip(
        x @ policy.linear.weight.detach().numpy().T.astype(np.float64) + [0.05, 0.0], -0.4, 0.4
    )
    with torch.no_grad():
        got = policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


class CountdownEnv(gym.Env):
    """Episode length 1 + seed % 5, reward 1 per step; stepping a finished episode is an error."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.left, self.t = 1 + seed % 5, 0
        return np.array([seed, 0.0]), {}

    def step(self, action):
        if self.left == 0:
            raise RuntimeError("stepped after the episode ended")
        self.left, self.t = self.left - 1, self.t + 1
        return np.array([0.0, self.t]), 1.0, self.left == 0, False, {}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_finished_members_are_masked(num_workers: int) -> None:
    n = 7
    envs = agent.LockstepEnvs(CountdownEnv, n, num_workers=num_workers)
    calls = []

    def act(obs: np.ndarray) -> np.ndarray:
        calls.append(obs.shape)
        return np.zeros((n, 1))

    try:
        for first in range(0, 12, 3):  # several resets: the split between processes may change
            seeds = np.arange(first, first + n)
            episodes = agent.rollout(envs, act, seeds, tracked=4)
            lengths = 1 + seeds % 5
            np.testing.assert_array_equal(episodes.lengths, lengths)
            np.testing.assert_array_equal(episodes.returns, lengths)  # no reward after the end
            assert episodes.obs_count == lengths[:4].sum()  # statistics from live tracked rows only
            assert envs.shares.sum() == n and (envs.shares >= 0).all()

        active = np.arange(n) < 2  # inactive members are never stepped
        episodes = agent.rollout(envs, act, np.full(n, 4), active=active)
        np.testing.assert_array_equal(episodes.lengths, np.where(active, 5, 0))
    finally:
        envs.close()
    assert set(calls) == {(n, 2)}  # the policy always sees the whole population at once
