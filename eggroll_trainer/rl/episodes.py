"""Episodes of a population in [`LockstepEnvs`][eggroll_trainer.rl.LockstepEnvs], and the bare-stepping
reference that throughput is measured against."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .lockstep import LockstepEnvs, MakeEnv

Act = Callable[[np.ndarray], np.ndarray]


@dataclass
class Episodes:
    """One episode per env of a [`rollout`][eggroll_trainer.rl.rollout]."""

    returns: np.ndarray  # (n,) true episode returns
    lengths: np.ndarray  # (n,) steps taken
    obs_count: int  # observations of the tracked rows, for the normaliser
    obs_sum: np.ndarray  # (obs_dim,)
    obs_sq_sum: np.ndarray  # (obs_dim,)


def rollout(
    envs: LockstepEnvs,
    act: Act,
    seeds: np.ndarray,
    active: np.ndarray | None = None,
    tracked: int = 0,
) -> Episodes:
    """One episode in every active env, in lockstep: ``act`` maps all n observations (n, obs) to the n
    actions (n, act_dim) at each step; a finished env is no longer stepped and its return stops counting.
    Observation statistics are summed over the live rows ``< tracked``."""
    envs.reset(seeds, active)
    returns, lengths = np.zeros(envs.n), np.zeros(envs.n, dtype=np.int64)
    obs_sum, obs_sq_sum, count = np.zeros(envs.obs_dim), np.zeros(envs.obs_dim), 0
    while True:
        alive = envs.done == 0  # (n,)
        if not alive.any():
            return Episodes(returns, lengths, count, obs_sum, obs_sq_sum)
        live = alive[:tracked].astype(np.float64)  # (tracked,)
        obs_sum += live @ envs.obs[:tracked]
        obs_sq_sum += live @ np.square(envs.obs[:tracked])
        count += int(live.sum())
        envs.act[:] = act(envs.obs)
        envs.step()
        returns += np.where(alive, envs.rew, 0.0)  # a finished member earns nothing
        lengths += alive


def bare_steps_per_s(make_env: MakeEnv, seconds: float, seed: int = 0) -> float:
    """Env steps per second of one bare environment with pre-drawn random actions: a throughput reference."""
    env = make_env()
    env.reset(seed=seed)
    space = env.action_space
    space.seed(seed)
    actions = [space.sample() for _ in range(4096)]
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(256):
            _, _, terminated, truncated, _ = env.step(actions[steps % len(actions)])
            steps += 1
            if terminated or truncated:
                env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate
