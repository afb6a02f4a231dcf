"""MuJoCo agents trained by EGGROLL: a linear policy, every member of the population stepped in lockstep.

One generation: the N members of the population and the unperturbed ("center") policy each play one
episode of a gymnasium MuJoCo task, all at once: at every step the observations of every member, shape
(N, obs_dim), go through the policy in population mode — one call, member i at row i — and the N actions
come back. Members that have finished are masked (no longer stepped) until the last one is done. Then
``EGGROLLTrainer`` moves θ along the ES estimate of the shaped returns (centered ranks, Adam).

What published ES needs on MuJoCo (OpenAI-ES, ARS, EvoTorch), all here:

* observation normalisation with a running mean/std shared by the population: frozen during a generation,
  updated from the generation's observations between generations;
* the alive bonus removed from the training fitness on the tasks that pay one per step (Hopper, Walker2d,
  Ant) — otherwise standing still is a local optimum; the logged returns are always the true returns;
* antithetic pairs that share the episode's start state, centered-rank shaping, Adam;
* the reported return (``eval_return``) is that of the unperturbed policy θ.

Outputs in ``--output-dir``: ``metrics.csv`` (one row per generation), ``learning_curve.png``,
``policy.pt``, ``summary.json`` and, with ``--gif``, ``policy.gif``. The policy is a plain ``nn.Sequential``
(normaliser included) mapping raw observations to actions; it loads without this file:

    policy = torch.load("policy.pt", weights_only=False)
    action = policy(torch.as_tensor(obs, dtype=torch.float32))

Run: python examples/mujoco_agent.py --env-id HalfCheetah-v5 --time-budget 600
Two processes sharing the population (each steps N/2 members; docs/guide/distributed.md):
     torchrun --standalone --nproc_per_node=2 examples/mujoco_agent.py --num-workers 0 --time-budget 600
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import functools
import json
import math
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# MuJoCo picks its OpenGL backend when it is imported, and a broken one (say MUJOCO_GL=osmesa without
# libOSMesa) fails the import. Stepping needs no OpenGL: import with rendering off, and keep your choice for
# `save_gif`, which tries it (else EGL, then OSMesa) in child processes.
os.environ["GIF_MUJOCO_GL"] = os.environ.get("GIF_MUJOCO_GL", os.environ.get("MUJOCO_GL", ""))
os.environ["MUJOCO_GL"] = "disable"
import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mujoco
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from eggroll_trainer import EGGROLLTrainer, current_population
from eggroll_trainer.distributed import all_sum, any_rank, init_from_torchrun, world

GL_BACKENDS = [os.environ["GIF_MUJOCO_GL"]] if os.environ["GIF_MUJOCO_GL"] else ["egl", "osmesa"]

# Every MuJoCo v5 model compiles with a deprecated 'settotalmass' attribute, and MuJoCo prints a warning
# for each of the N environments; the warning is about gymnasium's XML, not about this run.
mujoco.set_mju_user_warning(lambda msg: None if "settotalmass" in msg else print(f"MuJoCo: {msg}"))


def arg(default: Any, help: str, kind: type | None = None) -> Any:
    return field(default=default, metadata={"help": help, "kind": kind or type(default)})


@dataclass
class Args:
    env_id: str = arg("HalfCheetah-v5", "gymnasium MuJoCo task ('Ant' is short for 'Ant-v5')")
    seed: int = arg(0, "seed of the ES noise and of the episodes' start states")
    time_budget: float = arg(None, "stop after this many seconds of training (wall time)", float)
    total_env_steps: int = arg(
        None, "stop after this many env steps (default: the preset's, without --time-budget)", int
    )
    output_dir: str = arg(None, "where outputs go (default: runs/{env}__mujoco_agent__{seed}__{time})", str)
    gif: bool = arg(False, "render the trained policy to policy.gif (offscreen: MUJOCO_GL=egl or osmesa)")
    gif_steps: int = arg(300, "environment steps shown in the GIF")
    # Hyperparameters: unset ones come from the task's preset (PRESETS below).
    population_size: int = arg(None, "members N per generation, N/2 antithetic pairs (default: preset)", int)
    sigma: float = arg(None, "noise scale σ (default: preset)", float)
    lr: float = arg(None, "learning rate of Adam on the ES estimate (default: preset)", float)
    rank: int = arg(None, "rank r of each member's weight perturbation A Bᵀ/√r (default: preset)", int)
    alive_bonus: float = arg(
        None, "subtracted from the training fitness per step alive (default: preset)", float
    )
    max_episode_steps: int = arg(None, "episode length limit (default: the task's, 1000 for most)", int)
    obs_clip: float = arg(10.0, "normalised observations are clipped to ±obs_clip")
    num_workers: int = arg(1, "worker processes stepping environments beside the main process (0: none)")
    eval_episodes: int = arg(5, "episodes of the final evaluation of the saved policy")
    calibration_s: float = arg(2.0, "seconds of bare single-env stepping timed at start and end (reference)")


def parse_args() -> Args:
    """Every field of ``Args`` becomes a flag: ``--env-id Ant-v5``, ``--gif``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in dataclasses.fields(Args):
        flag, kind, help = "--" + f.name.replace("_", "-"), f.metadata["kind"], f.metadata["help"]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help)
        else:
            shown = help if f.default is None else f"{help} (default: {f.default})"
            parser.add_argument(flag, type=kind, default=f.default, help=shown)
    args = Args(**vars(parser.parse_args()))
    if "-v" not in args.env_id:
        args.env_id += "-v5"
    return args


# -------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    population_size: int = 32
    sigma: float = 0.03
    lr: float = 0.02
    rank: int = 1  # for a linear policy rank 1 learns as fast as full-rank noise (measured on HalfCheetah)
    alive_bonus: float = 0.0
    total_env_steps: int = 5_000_000
    env_kwargs: dict[str, Any] = field(default_factory=dict)


PRESETS = {
    "HalfCheetah": Preset(),
    "Hopper": Preset(alive_bonus=1.0),  # healthy_reward = 1 per step
    "Walker2d": Preset(alive_bonus=1.0),
    # The 78 contact-force entries of Ant's observation are almost always 0; leave them out.
    "Ant": Preset(alive_bonus=1.0, env_kwargs={"include_cfrc_ext_in_observation": False}),
    # Humanoid's healthy_reward is 5 per step: subtracting all of it makes falling at once the best policy.
    "Humanoid": Preset(alive_bonus=0.0),
    # Swimmer's fitness landscape is flat near θ = 0: explore wider.
    "Swimmer": Preset(sigma=0.1, lr=0.05, total_env_steps=10_000_000),
    "InvertedPendulum": Preset(total_env_steps=1_000_000),  # its reward is the alive bonus: never subtract it
}


def preset_for(env_id: str) -> Preset:
    return PRESETS.get(env_id.split("-v")[0], Preset())


# ------------------------------------------------------------------------------- the environments
class LockstepEnvs:
    """``n`` environments stepped together by this process and ``num_workers`` worker processes.

    Observations, actions, rewards and done flags live in shared memory; a step is one pipe message to each
    worker that has unfinished environments. A finished member is not stepped again (its reward is 0)
    until the next reset.

    Why not ``gymnasium.vector`` (``benchmarks/mujoco_stepping.py`` times the options): on HalfCheetah-v5 with
    33 environments on this 2-core machine, ``SyncVectorEnv`` stepped ~0.6x and ``AsyncVectorEnv`` ~0.35x
    as fast as one bare environment (per-env pipe traffic), this stepper ~0.8x in one process and ~1x or
    more split over the main process and one worker. Vector envs also reset finished members automatically
    and cannot leave them alone, so on Hopper/Walker2d/Ant they would keep simulating finished members.

    Load balancing: lockstep stepping across processes is only as fast as the slowest process, and on a
    shared machine a process often waits for a core. Measured here (33 envs, random actions): split 17/16
    over two processes ~29 k steps/s against ~23 k in one process on a quiet machine, but 16 k against
    25 k while other jobs ran.
    So every process holds all ``n`` environments, and at each reset (an episode never moves) the stepper
    takes whichever of "this process alone" and "split" gave more env steps per second lately, trying the
    other again every ``probe_every`` resets; a split deals the envs out in proportion to each process's
    measured speed (seconds per env step, a worker's round trip included).
    """

    def __init__(
        self, make_env: Callable[[], gym.Env], n: int, num_workers: int = 1, probe_every: int = 10
    ) -> None:
        self.local = [make_env() for _ in range(n)]
        space = self.local[0].observation_space
        self.n, self.obs_dim, self.action_space = n, space.shape[0], self.local[0].action_space
        self.act_dim = self.action_space.shape[0]
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self._shared = [ctx.RawArray("d", n * self.obs_dim), ctx.RawArray("d", n * self.act_dim)]
        self._shared += [ctx.RawArray("d", n), ctx.RawArray("B", n)]
        self.obs, self.act, self.rew, self.done = _views(self._shared, n)  # (n, obs), (n, act), (n,), (n,)
        self.done[:] = 1
        self.conns, self.procs = [], []
        for _ in range(num_workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(make_env, self._shared, n, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.probe_every, self._resets, self._since = probe_every, 0, time.perf_counter()
        self.shares = self._split(np.ones(num_workers + 1))  # envs per process, this one first
        self._rate = np.full(2, np.nan)  # env steps per second between resets: alone, split
        self._cost = np.full(num_workers + 1, np.nan)  # seconds per env step, per process
        self._time, self._steps = np.zeros(num_workers + 1), np.zeros(num_workers + 1)

    def reset(self, seeds: np.ndarray, active: np.ndarray | None = None) -> None:
        """Start an episode in every active env (env i with ``seeds[i]``); inactive ones stay done."""
        self._rebalance()
        active = np.ones(self.n, dtype=bool) if active is None else active
        self._run("reset", (seeds, active))

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
        self._steps[0] += _serve(
            self.local, 0, bounds[0], (self.obs, self.act, self.rew, self.done), cmd, arg
        )
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
        if not split:
            self.shares = np.zeros_like(self.shares)
            self.shares[0] = self.n
        else:
            self.shares = self._split(np.where(np.isnan(self._cost), 1.0, 1 / self._cost))

    def _split(self, speed: np.ndarray) -> np.ndarray:
        shares = np.floor(self.n * speed / speed.sum()).astype(int)  # (processes,)
        shares[0] = self.n - shares[1:].sum()
        return shares

    def close(self) -> None:
        for conn in self.conns:
            conn.send(("close", None, 0, 0))
        for proc in self.procs:
            proc.join(timeout=10)
        for env in self.local:
            env.close()


def _smooth(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(old), new, (old + new) / 2)


def _views(shared: list[Any], n: int) -> tuple[np.ndarray, ...]:
    obs, act, rew = (np.frombuffer(s, dtype=np.float64) for s in shared[:3])
    return obs.reshape(n, -1), act.reshape(n, -1), rew, np.frombuffer(shared[3], dtype=np.uint8)


def _serve(envs: list[gym.Env], lo: int, hi: int, views: tuple[np.ndarray, ...], cmd: str, arg: Any) -> int:
    """Reset or step envs ``lo .. hi-1`` in place in the shared arrays; returns the number stepped."""
    obs, act, rew, done = views
    stepped = 0
    for k in range(lo, hi):
        if cmd == "reset":
            seeds, active = arg
            if active[k]:
                obs[k] = envs[k].reset(seed=int(seeds[k]))[0]
            done[k] = not active[k]
        elif done[k]:
            rew[k] = 0.0  # finished: masked, not stepped
        else:
            obs[k], rew[k], terminated, truncated, _ = envs[k].step(act[k])
            done[k] = terminated or truncated
            stepped += 1
    return stepped


def _worker(make_env: Callable[[], gym.Env], shared: list[Any], n: int, conn: Any) -> None:
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


@dataclass
class Episodes:
    returns: np.ndarray  # (n,) true episode returns
    lengths: np.ndarray  # (n,) steps taken
    obs_count: int  # observations of the tracked rows (the population), for the normaliser
    obs_sum: np.ndarray  # (obs_dim,)
    obs_sq_sum: np.ndarray  # (obs_dim,)


def rollout(
    envs: LockstepEnvs,
    act: Callable[[np.ndarray], np.ndarray],
    seeds: np.ndarray,
    active: np.ndarray | None = None,
    tracked: int = 0,
) -> Episodes:
    """One episode in every active env, in lockstep: ``act`` maps all n observations (n, obs) to (n, act)
    per step; a member's return stops counting when its episode ends. Observation statistics are summed
    over the live rows ``< tracked``."""
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


def share(episodes: Episodes, lo: int, hi: int) -> Episodes:
    """The whole population's episodes on every process, when this one played members ``lo .. hi-1`` and
    the center (last row, played by every process): one all-reduce of 2N + 1 + 2·obs numbers. On one
    process (lo, hi = 0, N) nothing changes. Called between generations, never inside the fitness."""
    n, d = len(episodes.returns) - 1, len(episodes.obs_sum)
    mine = np.zeros(n, dtype=bool)
    mine[lo:hi] = True
    packed = np.concatenate([np.where(mine, episodes.returns[:n], 0.0), np.where(mine, episodes.lengths[:n], 0),
                             [episodes.obs_count], episodes.obs_sum, episodes.obs_sq_sum])  # fmt: skip
    total = all_sum(torch.from_numpy(packed)).numpy()
    returns = np.append(total[:n], episodes.returns[n])
    lengths = np.append(total[n : 2 * n], episodes.lengths[n]).astype(np.int64)
    obs_sum, obs_sq_sum = total[2 * n + 1 : 2 * n + 1 + d], total[2 * n + 1 + d :]
    return Episodes(returns, lengths, int(total[2 * n]), obs_sum, obs_sq_sum)


# ---------------------------------------------------------------------------------- the policy
class RunningMeanStd:
    """Mean and std of every observation the population has seen, merged batch by batch (Chan et al.)."""

    def __init__(self, dim: int, std_floor: float = 1e-2) -> None:
        self.count, self.mean, self.m2, self.std_floor = 0, np.zeros(dim), np.zeros(dim), std_floor

    def update(self, count: int, total: np.ndarray, total_sq: np.ndarray) -> None:
        if count == 0:
            return
        batch_mean = total / count
        batch_m2 = np.maximum(total_sq - count * batch_mean**2, 0.0)
        delta, merged = batch_mean - self.mean, self.count + count
        self.mean = self.mean + delta * count / merged
        self.m2 = self.m2 + batch_m2 + delta**2 * self.count * count / merged
        self.count = merged

    @property
    def std(self) -> np.ndarray:
        # Floored: some observation entries are (nearly) constant, e.g. contact forces that never fire.
        var = self.m2 / self.count if self.count else np.ones_like(self.m2)
        return np.maximum(np.sqrt(var), self.std_floor)


def make_policy(
    obs_dim: int, act_dim: int, act_low: float, act_high: float, obs_clip: float
) -> nn.Sequential:
    """raw obs → clip((obs − mean)/std) → linear → action clipped to the bounds; plain torch layers only, so
    a saved policy loads anywhere. The normaliser is a frozen diagonal affine map set between generations;
    only ``linear`` is trained (zero-initialised: the first center policy does nothing)."""
    normalise = nn.Linear(obs_dim, obs_dim)
    normalise.requires_grad_(False)
    linear = nn.Linear(obs_dim, act_dim)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    policy = nn.Sequential(
        OrderedDict(
            normalise=normalise,
            clip_obs=nn.Hardtanh(-obs_clip, obs_clip),
            linear=linear,
            clip_action=nn.Hardtanh(act_low, act_high),
        )
    )
    set_normaliser(policy, np.zeros(obs_dim), np.ones(obs_dim))
    return policy


@torch.no_grad()
def set_normaliser(policy: nn.Sequential, mean: np.ndarray, std: np.ndarray) -> None:
    inv_std = torch.as_tensor(1.0 / std, dtype=torch.float32)
    policy.normalise.weight.copy_(torch.diag(inv_std))
    policy.normalise.bias.copy_(-torch.as_tensor(mean, dtype=torch.float32) * inv_std)


def action_bounds(space: gym.spaces.Box) -> tuple[float, float]:
    low, high = np.unique(space.low), np.unique(space.high)
    if len(low) != 1 or len(high) != 1:  # every gymnasium MuJoCo v5 task has one bound for all actions
        raise ValueError(f"per-dimension action bounds are not supported: {space}")
    return float(low[0]), float(high[0])


# ------------------------------------------------------------------------------------- measuring
def bare_steps_per_s(make_env: Callable[[], gym.Env], seconds: float, seed: int) -> float:
    """Bare single-process stepping of one env with pre-drawn random actions: the throughput reference."""
    env = make_env()
    env.reset(seed=seed)
    space = env.action_space
    actions = np.random.default_rng(seed).uniform(space.low, space.high, (4096, *space.shape))
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


def plot_curve(rows: list[dict[str, float]], title: str, path: Path) -> None:
    col = lambda key: np.array([r[key] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x, label in (
        (axes[0], col("env_steps") / 1e6, "environment steps (millions)"),
        (axes[1], col("wall_time_s"), "wall time (s)"),
    ):
        ax.plot(x, col("eval_return"), label="unperturbed policy θ (eval_return)")
        ax.plot(x, col("mean_return"), alpha=0.7, label="population mean")
        ax.set(xlabel=label, ylabel="episode return")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_gif(policy: nn.Module, make_env: Callable[..., gym.Env], steps: int, seed: int, path: Path) -> bool:
    """Render one episode of ``policy`` offscreen. Each GL backend is tried in a child process: a backend is
    chosen once per process, and a broken GL driver may crash the process that loads it."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    for backend in GL_BACKENDS:
        child = ctx.Process(target=_render_gif, args=(policy, make_env, steps, seed, str(path), backend))
        child.start()
        child.join()
        if child.exitcode == 0 and path.exists():
            return True
    print(
        f"policy.gif not written: no offscreen OpenGL backend worked (tried MUJOCO_GL={', '.join(GL_BACKENDS)}). "
        "Install EGL (libegl1) or OSMesa (libosmesa6), or set MUJOCO_GL; training results are unaffected."
    )
    return False


def _render_gif(
    policy: nn.Module, make_env: Callable[..., gym.Env], steps: int, seed: int, path: str, backend: str
) -> None:
    os.environ["MUJOCO_GL"] = backend
    try:
        import imageio.v2 as imageio

        env = make_env(render_mode="rgb_array", width=320, height=240)
        obs, _ = env.reset(seed=seed)
        frames, every = [], 2
        for t in range(steps):
            if t % every == 0:
                frames.append(env.render())
            with torch.no_grad():
                action = policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        imageio.mimsave(path, frames, duration=1000 * every * env.unwrapped.dt, loop=0)
    except Exception as err:  # a missing or broken GL library: report it, the caller tries the next backend
        print(f"rendering with MUJOCO_GL={backend} failed: {type(err).__name__}: {err}".splitlines()[0])
        os._exit(1)
    os._exit(0)


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    args = parse_args()
    preset = preset_for(args.env_id)
    n = args.population_size or preset.population_size
    sigma, lr = args.sigma or preset.sigma, args.lr or preset.lr
    rank = args.rank or preset.rank
    alive_bonus = preset.alive_bonus if args.alive_bonus is None else args.alive_bonus
    # A time budget alone runs for its whole length; without either limit the preset's step budget applies.
    total_env_steps = args.total_env_steps or (math.inf if args.time_budget else preset.total_env_steps)
    run_name = f"{args.env_id}__mujoco_agent__{args.seed}__{int(time.time())}"
    out = Path(args.output_dir or f"runs/{run_name}")
    init_from_torchrun()  # under torchrun: the processes share the population (one process: nothing)
    lead = world()[0] == 0  # the first process prints and writes the outputs
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the policy is tiny; more threads only fight the environment workers
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    load_start = os.getloadavg()

    env_kwargs = dict(preset.env_kwargs, disable_env_checker=True)
    if args.max_episode_steps:
        env_kwargs["max_episode_steps"] = args.max_episode_steps
    make_env = functools.partial(gym.make, args.env_id, **env_kwargs)
    bare_start = bare_steps_per_s(make_env, args.calibration_s, args.seed)
    envs = LockstepEnvs(make_env, n + 1, args.num_workers)  # rows 0..N-1: the members; row N: the center θ
    act_low, act_high = action_bounds(envs.action_space)
    policy = make_policy(envs.obs_dim, envs.act_dim, act_low, act_high, args.obs_clip)
    center = copy.deepcopy(policy)  # θ itself: every call of `policy` inside step() is perturbed
    obs_stats = RunningMeanStd(envs.obs_dim)
    last: dict[str, Episodes] = {}

    def fitness(model: nn.Sequential) -> torch.Tensor:
        """Called once per generation with ``model`` in population mode for this process's members
        ``lo .. hi-1`` (all N on one process): (hi - lo, obs) -> (hi - lo, act)."""
        center.load_state_dict(model.state_dict())  # the parameters hold θ; the perturbations come from hooks
        pair_seeds = rng.integers(2**31, size=(n + 1) // 2)  # the same on every process
        seeds = np.append(np.repeat(pair_seeds, 2)[:n], rng.integers(2**31))  # members 2k, 2k+1 share a start
        members = current_population()
        lo, hi = members.start, members.start + members.size
        active = np.zeros(n + 1, dtype=bool)  # this process steps its members and the center
        active[lo:hi] = True
        active[n] = True

        def act(obs: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(obs).float()  # (N+1, obs); other processes' rows are not stepped here
            actions = np.zeros((n + 1, envs.act_dim))
            actions[lo:hi] = model(x[lo:hi]).numpy()
            actions[n:] = center(x[n:]).numpy()
            return actions  # (N+1, act)

        last["members"] = (lo, hi)
        episodes = last["episodes"] = rollout(envs, act, seeds, active, tracked=n)
        return torch.as_tensor(episodes.returns[lo:hi] - alive_bonus * episodes.lengths[lo:hi])

    trainer = EGGROLLTrainer(
        policy.linear.parameters(),
        model=policy,
        fitness_fn=fitness,
        population_size=n,
        learning_rate=lr,
        sigma=sigma,
        rank=rank,
        seed=args.seed,
        optimizer="adam",
        fitness_shaping="centered_rank",
        batched=True,
    )

    if lead:
        print(
            f"{args.env_id}: obs {envs.obs_dim}, act {envs.act_dim}, N={n}, σ={sigma}, lr={lr}, rank={rank}, "
            f"alive bonus subtracted={alive_bonus}; bare stepping {bare_start:,.0f} steps/s; output: {out}"
        )
    fields = ["generation", "env_steps", "wall_time_s", "mean_return", "eval_return", "max_return",
              "mean_length", "eval_length", "steps_per_s", "generation_s", "worker_envs"]  # fmt: skip
    rows: list[dict[str, float]] = []
    env_steps, gen_time, start = 0, 0.0, time.perf_counter()
    bar = tqdm(
        total=round(args.time_budget or total_env_steps),  # seconds when there is a time budget, else steps
        unit="s" if args.time_budget else "step",
        dynamic_ncols=True,
        disable=not lead,
    )
    with open(out / "metrics.csv" if lead else os.devnull, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        while env_steps < total_env_steps:
            elapsed = time.perf_counter() - start
            if args.time_budget and rows and any_rank(elapsed + gen_time > args.time_budget):
                break  # the next generation would end past the budget (on any process: all stop together)
            trainer.step()
            episodes = share(last["episodes"], *last["members"])  # the whole population's, on every process
            obs_stats.update(episodes.obs_count, episodes.obs_sum, episodes.obs_sq_sum)
            # The normaliser is frozen during a generation and updated between generations.
            set_normaliser(policy, obs_stats.mean, obs_stats.std)
            env_steps += int(episodes.lengths.sum())
            gen_time = time.perf_counter() - start - elapsed
            wall = time.perf_counter() - start
            row = dict(
                generation=trainer.generation, env_steps=env_steps, wall_time_s=round(wall, 2),
                mean_return=round(float(episodes.returns[:n].mean()), 2), eval_return=round(float(episodes.returns[n]), 2),
                max_return=round(float(episodes.returns[:n].max()), 2), mean_length=float(episodes.lengths[:n].mean()),
                eval_length=int(episodes.lengths[n]), steps_per_s=round(env_steps / wall), generation_s=round(gen_time, 3),
                worker_envs=int(envs.n - envs.shares[0]),
            )  # fmt: skip
            rows.append(row)
            writer.writerow(row)
            fh.flush()
            bar.update(
                (int(min(wall, args.time_budget)) if args.time_budget else min(env_steps, bar.total)) - bar.n
            )
            bar.set_postfix_str(
                f"gen {row['generation']}, eval_return {row['eval_return']:.0f}, {row['steps_per_s']:,} steps/s"
            )
    bar.close()
    train_time = time.perf_counter() - start
    if not lead:  # every process holds the same θ: the first one evaluates, saves and reports it
        envs.close()
        return

    # The saved policy: θ after the last update, with the normaliser it was trained with.
    torch.save(policy, out / "policy.pt")
    k = max(1, min(args.eval_episodes, envs.n))
    eval_seeds = np.arange(envs.n) + 10_000 * (args.seed + 1)
    with torch.no_grad():
        act = lambda obs: policy(torch.from_numpy(obs).float()).numpy()
        final = rollout(envs, act, eval_seeds, active=np.arange(envs.n) < k)
    envs.close()
    bare_end = bare_steps_per_s(make_env, args.calibration_s, args.seed)
    bare = (bare_start + bare_end) / 2
    title = f"{args.env_id}: EGGROLL, linear policy, N={n} (seed {args.seed})"
    plot_curve(rows, title, out / "learning_curve.png")
    summary = dict(
        env_id=args.env_id, seed=args.seed, population_size=n, sigma=sigma, lr=lr, rank=rank, alive_bonus=alive_bonus,
        generations=trainer.generation, env_steps=env_steps, train_time_s=round(train_time, 1),
        steps_per_s=round(env_steps / train_time), bare_steps_per_s_start=round(bare_start), bare_steps_per_s_end=round(bare_end),
        throughput_ratio=round(env_steps / train_time / bare, 3), eval_return_last=rows[-1]["eval_return"],
        final_eval_mean=round(float(final.returns[:k].mean()), 2), final_eval_std=round(float(final.returns[:k].std()), 2),
        final_eval_episodes=k, load_avg_start=load_start, load_avg_end=os.getloadavg(), args=dataclasses.asdict(args),
    )  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.gif and save_gif(policy, make_env, args.gif_steps, args.seed, out / "policy.gif"):
        print(f"wrote {out / 'policy.gif'}")
    print(
        f"{trainer.generation} generations, {env_steps:,} env steps in {train_time:.0f} s: {summary['steps_per_s']:,} steps/s "
        f"= {summary['throughput_ratio']:.2f}x bare single-env stepping ({bare_start:,.0f} / {bare_end:,.0f} steps/s at start / end)\n"
        f"eval_return (θ, last generation) {rows[-1]['eval_return']:.1f}; saved policy over {k} episodes "
        f"{summary['final_eval_mean']:.1f} ± {summary['final_eval_std']:.1f}; outputs in {out}"
    )


if __name__ == "__main__":
    main()
