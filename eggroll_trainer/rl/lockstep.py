"""Stepping many gymnasium environments in lockstep, in this process and in worker processes.

[`LockstepEnvs`][eggroll_trainer.rl.LockstepEnvs] holds ``n`` environments (any gymnasium-style env with a flat
``Box`` observation and a ``Box`` or ``Discrete`` action space). Observations, actions, rewards and done flags
live in shared memory; a step is one pipe message per worker, and only unfinished environments are stepped.
[`rollout`][eggroll_trainer.rl.rollout] (``episodes.py``) plays one episode in each of them with a batched
policy.

Why not ``gymnasium.vector`` (``benchmarks/mujoco_stepping.py --vector`` times it): on HalfCheetah-v5 with 33
environments on a 2-core machine, ``SyncVectorEnv`` stepped ~0.6x and ``AsyncVectorEnv`` ~0.35x as fast as one
bare environment (one pipe message per env per step), this stepper ~0.8x in one process. Vector envs also
reset finished members automatically and cannot leave them alone, so on tasks that terminate (Hopper,
Walker2d, Ant) they keep simulating finished members.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

MakeEnv = Callable[[], Any]


class LockstepEnvs:
    """``n`` environments stepped together by this process and ``num_workers`` worker processes.

    Write actions into ``act`` (n, act_dim) — for a ``Discrete`` space, the action index in column 0 —
    then call ``step()``; ``obs`` (n, obs_dim), ``rew`` (n,) and ``done`` (n,) are updated in place. A
    finished env is not stepped again (its reward is 0) until the next ``reset``.

    Load balancing: lockstep stepping across processes is only as fast as the slowest process, and on a
    shared machine a process often waits for a core (measured on 2 cores, 33 HalfCheetah envs: split over two
    processes ~29 k steps/s against ~23 k in one on a quiet machine, 16 k against 25 k while other jobs ran).
    So every process holds all ``n`` environments, and at each reset (an episode never moves) the stepper takes
    whichever of "this process alone" and "split" gave more env steps per second lately, trying the other
    again every ``probe_every`` resets; a split deals the envs out in proportion to each process's measured
    speed (seconds per env step, a worker's round trip included). ``shares`` holds the current split.

    One worker per core: with ``num_workers >= 2`` a split gives the main process no environment, so its core
    is free for the policy (and stays warm for it: after stepping dozens of MuJoCo environments, one
    population-mode call of a linear policy took ~0.5 ms here, against ~0.15 ms without). With one worker,
    the main process steps a share between its policy calls.

    Results do not depend on the split: an environment's episode is the same in whichever process steps it,
    and the policy always sees all ``n`` rows at once.

    Args:
        make_env: builds one environment (called ``n`` times per process; workers are forked where possible).
        n: number of environments.
        num_workers: worker processes beside this one (0: everything is stepped here).
        probe_every: resets between tries of the currently slower option.
        always_split: never step "this process alone" (the split is still dealt by measured speed); the
            attribute of that name may be changed between episodes. Benchmarks use it.
    """

    def __init__(
        self,
        make_env: MakeEnv,
        n: int,
        num_workers: int = 0,
        probe_every: int = 10,
        always_split: bool = False,
    ) -> None:
        if n < 1 or num_workers < 0 or probe_every < 1:
            raise ValueError(
                f"Invalid LockstepEnvs: n={n}, num_workers={num_workers}, probe_every={probe_every}"
            )
        self.local = [make_env() for _ in range(n)]
        obs_space, self.action_space = self.local[0].observation_space, self.local[0].action_space
        if len(obs_space.shape) != 1:
            raise ValueError(f"LockstepEnvs needs flat observations, got an observation space {obs_space}")
        self.discrete = self.action_space.shape == () and hasattr(self.action_space, "n")
        self.n, self.obs_dim = n, obs_space.shape[0]
        self.act_dim = 1 if self.discrete else int(np.prod(self.action_space.shape))
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self._shared = [ctx.RawArray("d", n * self.obs_dim), ctx.RawArray("d", n * self.act_dim)]
        self._shared += [ctx.RawArray("d", n), ctx.RawArray("B", n)]
        self.obs, self.act, self.rew, self.done = _views(self._shared, n)  # (n, obs), (n, act), (n,), (n,)
        self.done[:] = 1
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        for _ in range(num_workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(make_env, self._shared, n, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.probe_every, self.always_split = probe_every, always_split
        self._resets, self._since = 0, time.perf_counter()
        self.shares = self._split(np.ones(num_workers + 1))  # envs per process, this one first
        self._rate = np.full(2, np.nan)  # env steps per second between resets: alone, split
        self._cost = np.full(num_workers + 1, np.nan)  # seconds per env step, per process
        self._time, self._steps = np.zeros(num_workers + 1), np.zeros(num_workers + 1)

    def reset(self, seeds: np.ndarray, active: np.ndarray | None = None) -> None:
        """Start an episode in every active env (env i with ``seeds[i]``); inactive ones stay done."""
        self._rebalance()
        active = np.ones(self.n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        self._run("reset", (np.asarray(seeds), active))

    def step(self) -> None:
        """Step every unfinished env with its row of ``act``."""
        self._run("step", None)

    def _run(self, cmd: str, arg: Any) -> None:
        start = time.perf_counter()
        bounds = np.cumsum(self.shares)  # process p serves envs [bounds[p-1], bounds[p])
        busy = [w for w in range(len(self.conns)) if self.shares[w + 1] > 0]
        if cmd == "step":  # a worker whose envs have all finished gets no message
            busy = [w for w in busy if not self.done[bounds[w] : bounds[w + 1]].all()]
        for w in busy:
            self.conns[w].send((cmd, arg, int(bounds[w]), int(bounds[w + 1])))
        views = (self.obs, self.act, self.rew, self.done)
        self._steps[0] += _serve(self.local, 0, int(bounds[0]), views, cmd, arg)
        self._time[0] += time.perf_counter() - start
        for w in busy:
            reply = self.conns[w].recv()
            if isinstance(reply, str):
                raise RuntimeError(f"environment worker failed:\n{reply}")
            finished_at, stepped = reply  # perf_counter is system-wide (CLOCK_MONOTONIC): comparable
            self._time[w + 1] += finished_at - start
            self._steps[w + 1] += stepped

    def _rebalance(self) -> None:
        """Measure the episode that ended, then deal the envs out for the next one."""
        now, steps = time.perf_counter(), self._steps.sum()
        split = int(self.shares[0] < self.n)
        if steps:  # smoothed over two episodes: one episode's timing is noisy on a shared machine
            self._rate[split] = _smooth(self._rate[split], steps / (now - self._since))
            if split:
                measured = self._steps > 0
                self._cost[measured] = _smooth(
                    self._cost[measured], self._time[measured] / self._steps[measured]
                )
        self._since, self._resets = now, self._resets + 1
        self._time[:], self._steps[:] = 0, 0
        if not self.conns:
            return
        if np.isnan(self._rate).any():
            split = int(np.isnan(self._rate[1]))  # try both: split first, then alone
        else:
            split = int(self._rate[1] >= self._rate[0]) ^ (self._resets % self.probe_every == 0)
        split = split or self.always_split
        if not split:
            self.shares = np.zeros_like(self.shares)
            self.shares[0] = self.n
        else:
            self.shares = self._split(np.where(np.isnan(self._cost), 1.0, 1 / self._cost))

    def _split(self, speed: np.ndarray) -> np.ndarray:
        """Envs per process, in proportion to ``speed``; none for the main process with two workers or more."""
        speed = speed.astype(float)
        if len(speed) > 2:
            speed[0] = 0.0  # the main process runs the policy: every worker has a core of its own
        shares = np.floor(self.n * speed / speed.sum()).astype(int)  # (processes,)
        shares[int(np.argmax(speed))] += self.n - shares.sum()  # the rounding remainder to the fastest
        return shares

    def close(self) -> None:
        """Stop the workers and close every environment."""
        for conn in self.conns:
            conn.send(("close", None, 0, 0))
        for proc in self.procs:
            proc.join(timeout=10)
        self.conns, self.procs = [], []
        for env in self.local:
            env.close()


def _smooth(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(old), new, (old + new) / 2)


def _views(shared: list[Any], n: int) -> tuple[np.ndarray, ...]:
    obs, act, rew = (np.frombuffer(s, dtype=np.float64) for s in shared[:3])
    return obs.reshape(n, -1), act.reshape(n, -1), rew, np.frombuffer(shared[3], dtype=np.uint8)


def _serve(envs: list[Any], lo: int, hi: int, views: tuple[np.ndarray, ...], cmd: str, arg: Any) -> int:
    """Reset or step envs ``lo .. hi-1`` in place in the shared arrays; returns the number stepped."""
    obs, act, rew, done = views
    stepped = 0
    discrete = hi > lo and envs[lo].action_space.shape == ()
    for k in range(lo, hi):
        if cmd == "reset":
            seeds, active = arg
            if active[k]:
                obs[k] = envs[k].reset(seed=int(seeds[k]))[0]
            done[k] = not active[k]
        elif done[k]:
            rew[k] = 0.0  # finished: masked, not stepped
        else:
            action = int(act[k, 0]) if discrete else act[k].reshape(envs[k].action_space.shape)
            obs[k], rew[k], terminated, truncated, _ = envs[k].step(action)
            done[k] = terminated or truncated
            stepped += 1
    return stepped


def _worker(make_env: MakeEnv, shared: list[Any], n: int, conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    envs = [make_env() for _ in range(n)]
    views = _views(shared, n)
    while True:
        cmd, arg, lo, hi = conn.recv()
        if cmd == "close":
            break
        try:
            stepped = _serve(envs, lo, hi, views, cmd, arg)
            conn.send((time.perf_counter(), stepped))
        except Exception:
            conn.send(traceback.format_exc())
    for env in envs:
        env.close()
