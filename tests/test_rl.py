"""eggroll_trainer.rl: lockstep stepping with masking, the shared normaliser, reward shift, the center θ."""

from __future__ import annotations

import copy
import functools
import os

import numpy as np
import pytest
import torch
from torch import nn

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.rl import (
    BestPolicies,
    LockstepEnvs,
    PopulationRollout,
    RunningMeanStd,
    rollout,
    select_best,
)

gym = pytest.importorskip("gymnasium")


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


class LineEnv(gym.Env):
    """x starts at seed % 7 − 3; the action a ∈ [−1, 1] moves it, reward 2 − |x| per step (2 an "alive
    bonus"); the episode ends when |x| < 0.5 or after 8 steps. Every env logs the observations it returns
    and whether the policy will see them (not after the last step)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    made: list[LineEnv] = []

    def __init__(self):
        self.log: list[tuple[np.ndarray, bool]] = []
        self.rewards: list[float] = []
        LineEnv.made.append(self)

    def reset(self, *, seed=None, options=None):
        self.x, self.t = float(seed % 7 - 3), 0
        self.log.append((self._obs(), True))
        return self._obs(), {}

    def step(self, action):
        assert -1.0 <= float(action[0]) <= 1.0  # clipped by the rollout
        self.x, self.t = self.x + float(action[0]), self.t + 1
        done = abs(self.x) < 0.5 or self.t == 8
        self.rewards.append(2.0 - abs(self.x))
        self.log.append((self._obs(), not done))
        return self._obs(), self.rewards[-1], done, False, {}

    def _obs(self):
        return np.array([self.x, 3.0])


def line_setup(n=8, shift=0.0, chunk_size=None, center_episodes=1):
    LineEnv.made = []
    torch.manual_seed(0)
    policy = nn.Linear(2, 1)
    rollout_ = PopulationRollout(
        LineEnv, policy, n, seed=1, reward_shift=shift, center_episodes=center_episodes
    )
    trainer = EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=rollout_.fitness, population_size=n,
                             learning_rate=0.1, sigma=0.3, seed=0, batched=True, optimizer="adam",
                             fitness_shaping="centered_rank", chunk_size=chunk_size)  # fmt: skip
    return policy, rollout_, trainer


def test_running_mean_std_merges_batches_exactly():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(rows, 4)) for rows in (5, 1, 40, 7)]
    stats = RunningMeanStd(4)
    stats.update(0, np.zeros(4), np.zeros(4))  # an empty batch changes nothing
    for b in batches:
        stats.update(len(b), b.sum(0), np.square(b).sum(0))
    every = np.concatenate(batches)
    assert stats.count == len(every)
    np.testing.assert_allclose(stats.mean, every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, every.std(0), rtol=1e-9)
    constant = RunningMeanStd(2, std_floor=1e-2)
    constant.update(3, np.array([3.0, -6.0]), np.array([3.0, 12.0]))  # three rows of (1, -2)
    np.testing.assert_allclose(constant.mean, [1.0, -2.0])
    np.testing.assert_allclose(constant.std, [1e-2, 1e-2])  # floored, not 0


@pytest.mark.parametrize("num_workers", [0, 1])
def test_finished_members_are_masked_not_stepped(num_workers):
    n = 7
    envs = LockstepEnvs(CountdownEnv, n, num_workers=num_workers)
    calls = []

    def act(obs):
        calls.append(obs.shape)
        return np.zeros((n, 1))

    try:
        for first in range(0, 12, 3):  # several resets: the split between processes may change
            seeds = np.arange(first, first + n)
            episodes = rollout(envs, act, seeds, tracked=4)
            lengths = 1 + seeds % 5
            np.testing.assert_array_equal(episodes.lengths, lengths)
            np.testing.assert_array_equal(episodes.returns, lengths)  # no reward after the end
            assert episodes.obs_count == lengths[:4].sum()  # statistics from live tracked rows only
            assert envs.shares.sum() == n and (envs.shares >= 0).all()
        active = np.arange(n) < 2  # inactive members are never stepped
        episodes = rollout(envs, act, np.full(n, 4), active=active)
        np.testing.assert_array_equal(episodes.lengths, np.where(active, 5, 0))
    finally:
        envs.close()
    assert set(calls) == {(n, 2)}  # the policy always sees the whole population at once


class FailsInAWorker(CountdownEnv):
    main = os.getpid()

    def step(self, action):
        if os.getpid() != self.main:
            raise ValueError("simulator crashed")
        return super().step(action)


def test_a_worker_error_is_raised_here():
    envs = LockstepEnvs(FailsInAWorker, 3, num_workers=1)
    try:
        envs.reset(np.array([4, 4, 4]))  # the first episode is split: the worker steps one env
        with pytest.raises(RuntimeError, match="worker failed(.|\n)*simulator crashed"):
            envs.step()
    finally:
        envs.close()


def test_generation_reward_shift_normaliser_and_center():
    n, shift = 8, 2.0
    policy, roll, trainer = line_setup(n, shift)
    scores = []
    trainer.fitness_fn = lambda m: scores.append(roll.fitness(m)) or scores[-1]
    seen_so_far = 0
    for generation in range(3):
        mean, std = roll.stats.mean.copy(), roll.stats.std.copy()
        seeds, theta = roll.seeds.copy(), copy.deepcopy(policy)
        assert (seeds[0:n:2] == seeds[1:n:2]).all()  # antithetic pairs share their start state
        for env in LineEnv.made:
            env.log, env.rewards = [], []
        trainer.step()
        gen = roll.end_generation()
        # true returns are reported; the fitness has the shift per step removed
        true = np.array([sum(env.rewards) for env in LineEnv.made])
        np.testing.assert_allclose(gen.returns, true[:n])
        np.testing.assert_allclose(scores[-1].numpy(), gen.returns - shift * gen.lengths)
        assert gen.env_steps == sum(len(env.rewards) for env in LineEnv.made)
        # the normaliser was updated from the members' observations the policy saw (not the center's)
        seen = np.array([obs for env in LineEnv.made[:n] for obs, live in env.log if live])
        seen_so_far += len(seen)
        assert roll.stats.count == seen_so_far
        if generation == 0:
            np.testing.assert_allclose(roll.stats.mean, seen.mean(0))
            np.testing.assert_allclose(roll.stats.std, np.maximum(seen.std(0), 1e-2))
        # the center played θ itself, with the normaliser frozen at its start-of-generation value
        env = LineEnv()
        obs, _ = env.reset(seed=int(seeds[n]))
        done, total = False, 0.0
        while not done:
            x = torch.as_tensor(np.clip((obs - mean) / std, -10, 10), dtype=torch.float32)
            action = np.clip(theta(x).detach().double().numpy(), -1, 1)
            obs, reward, done, _, _ = env.step(action)
            total += reward
        assert gen.center_return == pytest.approx(total) and gen.center_length == env.t
        LineEnv.made.pop()
    roll.close()


def play(policy, seed, normaliser):
    """One LineEnv episode of a plain copy of θ behind a frozen normaliser (mean, std): the reference."""
    mean, std = normaliser
    env = LineEnv()
    LineEnv.made.pop()
    obs, _ = env.reset(seed=int(seed))
    done, total = False, 0.0
    while not done:
        x = torch.as_tensor(np.clip((obs - mean) / std, -10, 10), dtype=torch.float32)
        obs, reward, done, _, _ = env.step(np.clip(policy(x).detach().double().numpy(), -1, 1))
        total += reward
    return total, env.t


def test_center_median_of_several_episodes_and_the_policy_that_played_them():
    n, e = 6, 3
    policy, roll, trainer = line_setup(n, center_episodes=e)
    for _ in range(3):
        normaliser, seeds, theta = (roll.stats.mean, roll.stats.std), roll.seeds.copy(), copy.deepcopy(policy)
        assert len(seeds) == n + e and len(set(seeds[n:])) == e  # every center episode from its own state
        trainer.step()
        gen = roll.end_generation()
        played = [play(theta, seed, normaliser) for seed in seeds[n:]]
        np.testing.assert_allclose(gen.center_returns, [r for r, _ in played])
        np.testing.assert_array_equal(gen.center_lengths, [t for _, t in played])
        assert gen.center_return == np.median(gen.center_returns) and gen.center_length == np.median(
            gen.center_lengths
        )
        assert gen.env_steps == gen.lengths.sum() + gen.center_lengths.sum()
        # played_center(): the policy the center played (θ before the update, the normaliser frozen then)
        obs = torch.tensor([[2.0, 3.0], [-1.0, 3.0]])
        x = torch.as_tensor(
            np.clip((obs.numpy() - normaliser[0]) / normaliser[1], -10, 10), dtype=torch.float32
        )
        torch.testing.assert_close(roll.played_center()(obs), theta(x).clamp(-1, 1), atol=1e-5, rtol=1e-5)
        assert not torch.equal(theta.weight, policy.weight)  # θ itself has moved on
    roll.close()


def test_evaluate_any_number_of_episodes_of_any_policy():
    policy, roll, trainer = line_setup(n=4)  # 5 environments
    with pytest.raises(RuntimeError, match="no generation"):
        roll.played_center()
    trainer.step()
    roll.end_generation()
    many = roll.evaluate(12, seed=3)  # θ now: 12 episodes, 5 at a time, seeds 3 .. 14
    assert many.shape == (12,)
    np.testing.assert_array_equal(many[:5], roll.evaluate(5, seed=3))
    normaliser = (roll.stats.mean, roll.stats.std)
    np.testing.assert_allclose(many, [play(policy, seed, normaliser)[0] for seed in range(3, 15)])
    deployed = roll.evaluate(12, seed=3, policy=roll.deployable())  # the same policy as plain layers
    np.testing.assert_allclose(deployed, many, rtol=1e-5)
    with pytest.raises(ValueError, match="episodes"):
        roll.evaluate(0, seed=3)
    roll.close()
    with pytest.raises(ValueError, match="center_episodes=0"):
        PopulationRollout(LineEnv, policy, 4, center_episodes=0)


def test_best_policies_keep_the_best_few():
    built = []

    def build(name):
        return lambda: built.append(name) or nn.Linear(1, 1)

    best = BestPolicies(keep=2)
    for name, score in [("a", 1.0), ("b", 3.0), ("c", 2.0), ("d", 3.0), ("e", float("nan")), ("f", 0.5)]:
        best.offer(score, name, build(name))
    assert best.scores() == {"b": 3.0, "d": 3.0}  # best first; on a tie the earlier one first
    assert list(best.policies()) == ["b", "d"]
    assert built == ["a", "b", "c", "d"]  # a policy is only built when it is kept
    with pytest.raises(ValueError, match="keep"):
        BestPolicies(keep=0)


def test_select_best_by_mean_return_on_the_same_episodes():
    candidates = {"early": nn.Linear(1, 1), "late": nn.Linear(1, 1), "last": nn.Linear(1, 1)}
    means = {id(candidates["early"]): 5.0, id(candidates["late"]): 7.0, id(candidates["last"]): 7.0}
    name, returns = select_best(candidates, lambda p: np.array([means[id(p)] - 1, means[id(p)] + 1]))
    assert name == "late" and list(returns) == ["early", "late", "last"]  # a tie goes to the first
    np.testing.assert_array_equal(returns["early"], [4.0, 6.0])
    with pytest.raises(ValueError, match="no candidates"):
        select_best({}, lambda p: np.zeros(1))


def test_end_generation_is_required():
    _, roll, trainer = line_setup()
    trainer.step()
    with pytest.raises(RuntimeError, match="end_generation"):
        trainer.step()
    roll.close()


def test_fitness_needs_a_batched_trainer_of_the_same_size():
    policy, roll, _ = line_setup()
    for kw in (dict(population_size=8, batched=False), dict(population_size=6, batched=True)):
        trainer = EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=roll.fitness, seed=0, **kw)
        with pytest.raises(ValueError, match="batched=True"):
            trainer.step()
    roll.close()


def test_chunked_evaluation_plays_every_member_and_the_center_once():
    _, roll, trainer = line_setup(n=8, chunk_size=4)
    trainer.step()
    gen = roll.end_generation()
    assert (gen.lengths > 0).all() and gen.center_length > 0
    assert gen.env_steps == gen.lengths.sum() + gen.center_length
    roll.close()


def test_learns_and_deploys():
    policy, roll, trainer = line_setup(n=16, shift=2.0)
    first = None
    for _ in range(25):
        trainer.step()
        gen = roll.end_generation()
        first = gen.returns.mean() - 2 * gen.lengths.mean() if first is None else first
    assert gen.returns.mean() - 2 * gen.lengths.mean() > first  # the shifted return: reach 0, fast
    evaluated = roll.evaluate(episodes=3, seed=5)
    assert evaluated.shape == (3,)
    deployed = roll.deployable()  # raw observation in, bounded action out: the center's policy
    obs = torch.tensor([[2.0, 3.0], [-40.0, 3.0]])
    x = np.clip((obs.numpy() - roll.stats.mean) / roll.stats.std, -10, 10)
    expected = policy(torch.as_tensor(x, dtype=torch.float32)).clamp(-1, 1)
    torch.testing.assert_close(deployed(obs), expected, atol=1e-5, rtol=1e-5)
    roll.close()


def test_resume_continues_exactly():
    policy, roll, trainer = line_setup()
    for _ in range(2):
        trainer.step()
        roll.end_generation()
    saved = copy.deepcopy((policy.state_dict(), trainer.state_dict(), roll.state_dict()))
    trainer.step()
    expected = (roll.end_generation(), [p.clone() for p in policy.parameters()])
    roll.close()

    policy, roll, trainer = line_setup()  # a fresh run, then the checkpoint: θ, the trainer, the rollout
    policy.load_state_dict(saved[0])
    trainer.load_state_dict(saved[1])
    roll.load_state_dict(saved[2])
    trainer.step()
    got = roll.end_generation()
    np.testing.assert_array_equal(got.returns, expected[0].returns)
    assert got.center_return == expected[0].center_return
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), expected[1]))
    roll.close()


@pytest.mark.parametrize("num_workers", [1, 2])
def test_returns_do_not_depend_on_the_split(num_workers):
    """The same seed gives the same episodes and the same θ whichever process steps which environment."""
    pytest.importorskip("mujoco")
    make_env = functools.partial(gym.make, "HalfCheetah-v5", max_episode_steps=15, disable_env_checker=True)

    def run(workers):
        torch.manual_seed(0)
        policy = nn.Linear(17, 6)
        roll = PopulationRollout(make_env, policy, 4, seed=0, num_workers=workers, center_episodes=2)
        roll.envs.always_split = workers > 0
        trainer = EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=roll.fitness, population_size=4,
                                 sigma=0.1, seed=0, batched=True)  # fmt: skip
        gens, shares = [], []
        for _ in range(2):
            trainer.step()
            gens.append(roll.end_generation())
            shares.append(roll.envs.shares.copy())
        roll.close()
        return gens, shares, policy.weight.detach().clone()

    alone, _, theta = run(0)
    split, shares, theta_split = run(num_workers)
    # the first episodes are dealt out evenly (later ones by measured speed); with one worker per core the
    # main process steps none and runs the policy
    assert list(shares[0]) == ([3, 3] if num_workers == 1 else [0, 3, 3])
    for a, b in zip(alone, split):
        np.testing.assert_array_equal(a.returns, b.returns)
        np.testing.assert_array_equal(a.center_returns, b.center_returns)
    assert torch.equal(theta, theta_split)


def test_discrete_actions_play_the_argmax():
    roll = PopulationRollout(functools.partial(gym.make, "CartPole-v1"), nn.Linear(4, 2), 4, seed=0)
    trainer = EGGROLLTrainer(roll.policy.parameters(), model=roll.policy, fitness_fn=roll.fitness,
                             population_size=4, sigma=0.5, seed=0, batched=True)  # fmt: skip
    trainer.step()
    gen = roll.end_generation()
    assert (gen.returns == gen.lengths).all() and gen.center_length >= 1  # CartPole pays 1 per step
    roll.close()


def test_short_mujoco_run():
    pytest.importorskip("mujoco")
    make_env = functools.partial(gym.make, "HalfCheetah-v5", max_episode_steps=20, disable_env_checker=True)
    policy = nn.Linear(17, 6)
    roll = PopulationRollout(make_env, policy, 4, seed=0, num_workers=1)
    trainer = EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=roll.fitness, population_size=4,
                             sigma=0.1, seed=0, batched=True)  # fmt: skip
    for _ in range(2):
        trainer.step()
        gen = roll.end_generation()
        assert gen.env_steps == 5 * 20 and np.isfinite(gen.returns).all()
    env = make_env()
    obs, _ = env.reset(seed=0)
    action = roll.deployable()(torch.as_tensor(obs, dtype=torch.float32)).detach().numpy()
    assert env.action_space.contains(action.astype(np.float32))
    roll.close()


def test_guide_script_runs():
    """docs/guide/rl.md: the ES-RL script (3 generations here) and the low-level example."""
    from test_docs_snippets import ROOT, run_page

    first = []
    ns = run_page(ROOT / "docs" / "guide" / "rl.md", budgets={"range(50)": "range(3)"},
                  checks={0: lambda ns: first.append(ns["trainer"].generation)})  # fmt: skip
    assert first == [3] and ns["returns"].shape == (5,)  # the first script's evaluation
    assert ns["trainer"].generation == 10 and ns["name"] in ns["candidates"] and ns["final"].shape == (5,)
    assert set(ns["selection"]) == set(ns["candidates"]) and len(ns["candidates"]) <= 4
    assert ns["episodes"].lengths.shape == (8,) and (ns["episodes"].returns == ns["episodes"].lengths).all()
