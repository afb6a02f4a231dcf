"""How fast do the environments of a MuJoCo generation step, with and without the policy? (eggroll_trainer.rl)

The reference is **bare single-process stepping**: the generation's N + E environments (the task preset's N
members and 5 episodes of the center by default) in one ``LockstepEnvs``, random actions, no policy. Against it, in the
same run and interleaved round by round (the machine is shared: each round's ratio is taken under one load):

* bare stepping split over processes (random actions): main + 1 worker, and 2 workers (one per core, the
  main process idle) — what the split alone can give;
* whole training generations (``EGGROLLTrainer`` + ``PopulationRollout``: the population-mode policy at every
  step, the update, the normaliser) with ``num_workers`` 0, 1 and 2, the split forced (``always_split``);
* with ``--vector``, gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv`` of the same environments.

Episodes never terminate early here (``terminate_when_unhealthy=False`` where the task has it) and last
``--episode-steps``, so every case steps the same physics; the policy is a randomly initialised linear one.
Writes ``benchmarks/results/mujoco_stepping_<env>.md``.

    python benchmarks/mujoco_stepping.py --env-id HalfCheetah-v5
    python benchmarks/mujoco_stepping.py --env-id Walker2d-v5
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")  # stepping needs no OpenGL
import gymnasium as gym
import mujoco
import numpy as np
import torch
from common import RESULTS, machine, markdown_table, write_markdown
from torch import nn

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.rl import LockstepEnvs, PopulationRollout, bare_steps_per_s, rollout
from eggroll_trainer.rl.presets import preset_for

mujoco.set_mju_user_warning(lambda msg: None)  # v5 models warn about 'settotalmass' once per env
REFERENCE = "bare stepping, one process (the reference)"


def lockstep_bare(make_env, n: int, workers: int, seconds: float) -> Callable[[], float]:
    """Env steps/s of episodes with random actions in a LockstepEnvs (the split forced when workers > 0)."""
    envs = LockstepEnvs(make_env, n, num_workers=workers, always_split=workers > 0)
    rng = np.random.default_rng(0)
    low, high = envs.action_space.low, envs.action_space.high

    def run() -> float:
        steps, start, seed = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            episodes = rollout(
                envs, lambda obs: rng.uniform(low, high, (n, envs.act_dim)), seed + np.arange(n)
            )
            steps, seed = steps + int(episodes.lengths.sum()), seed + n
        return steps / (time.perf_counter() - start)

    run.close = envs.close  # type: ignore[attr-defined]
    return run


def stepping_env(env_id: str, episode_steps: int):
    """``make_env`` for the timings: episodes of exactly ``episode_steps`` steps (none ends early)."""
    kwargs = dict(disable_env_checker=True, max_episode_steps=episode_steps)
    if env_id.split("-")[0] in ("Hopper", "Walker2d", "Ant", "Humanoid"):
        kwargs["terminate_when_unhealthy"] = False
    return functools.partial(gym.make, env_id, **kwargs)


def training(
    make_env, population: int, centers: int, workers: int
) -> tuple[PopulationRollout, EGGROLLTrainer]:
    """A random linear policy's rollout and trainer (ARS-style top-4 SGD), the split forced with workers."""
    probe = make_env()
    torch.manual_seed(0)
    policy = nn.Linear(probe.observation_space.shape[0], probe.action_space.shape[0])
    roll = PopulationRollout(
        make_env, policy, population, seed=0, num_workers=workers, center_episodes=centers
    )
    roll.envs.always_split = workers > 0
    trainer = EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=roll.fitness, population_size=population,
                             learning_rate=1e-3, sigma=0.03, rank=1, seed=0, batched=True, optimizer="sgd",
                             fitness_shaping="raw", elite_k=4)  # fmt: skip
    return roll, trainer


def generations(make_env, population: int, centers: int, workers: int, seconds: float) -> Callable[[], float]:
    """Env steps/s of whole training generations (trainer.step() + end_generation())."""
    roll, trainer = training(make_env, population, centers, workers)

    def run() -> float:
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            trainer.step()
            steps += roll.end_generation().env_steps
        return steps / (time.perf_counter() - start)

    run.close = roll.close  # type: ignore[attr-defined]
    return run


def vector(kind: str, make_env, n: int, seconds: float) -> Callable[[], float]:
    envs = (gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv)([make_env] * n)
    envs.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (64, n, envs.single_action_space.shape[0]))

    def run() -> float:
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            envs.step(actions[steps // n % 64])
            steps += n
        return steps / (time.perf_counter() - start)

    run.close = envs.close  # type: ignore[attr-defined]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-id", default="HalfCheetah-v5")
    parser.add_argument("--population", type=int, default=None, help="N members (default: the task's preset)")
    parser.add_argument(
        "--center-episodes", type=int, default=5, help="E episodes of the center per generation"
    )
    parser.add_argument("--episode-steps", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0, help="per case and round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds")
    parser.add_argument("--vector", action="store_true", help="also time gymnasium's vector envs")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.population = args.population or preset_for(args.env_id).population_size
    torch.set_num_threads(1)
    caption = machine()
    make_env = stepping_env(args.env_id, args.episode_steps)
    n, s = args.population + args.center_episodes, args.seconds
    cases = {
        "one bare environment, random actions": lambda: bare_steps_per_s(make_env, s, 0),
        REFERENCE: lockstep_bare(make_env, n, 0, s),
        "bare stepping, main + 1 worker": lockstep_bare(make_env, n, 1, s),
        "bare stepping, 2 workers (one per core)": lockstep_bare(make_env, n, 2, s),
        "training generations, one process": generations(
            make_env, args.population, args.center_episodes, 0, s
        ),
        "training generations, main + 1 worker": generations(
            make_env, args.population, args.center_episodes, 1, s
        ),
        "training generations, 2 workers (one per core)": generations(
            make_env, args.population, args.center_episodes, 2, s
        ),
    }
    if args.vector:
        cases[f"SyncVectorEnv({n}), random actions"] = vector("sync", make_env, n, s)
        cases[f"AsyncVectorEnv({n}), random actions"] = vector("async", make_env, n, s)
    for run in cases.values():  # warm up: first episodes, the workers' first messages
        if hasattr(run, "close"):
            run()
    rates: dict[str, list[float]] = {name: [] for name in cases}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for name, run in cases.items():
            rates[name].append(run())
            print(f"{name}: {rates[name][-1]:,.0f} env steps/s", flush=True)
    load.append(os.getloadavg()[0])
    for run in cases.values():
        getattr(run, "close", lambda: None)()

    ref = rates[REFERENCE]
    rows = [
        (name, f"{statistics.median(v):,.0f}", f"{min(v):,.0f}", f"{max(v):,.0f}",
         f"{statistics.median(a / b for a, b in zip(v, ref)):.2f}×")
        for name, v in rates.items()
    ]  # fmt: skip
    command = f"python benchmarks/mujoco_stepping.py --env-id {args.env_id} --seconds {s:g} --repeats {args.repeats}"
    lines = [
        f"**Stepping the {n} environments of a generation ({args.population} members + {args.center_episodes} "
        f"center episodes), {args.env_id}, {args.episode_steps}-step episodes: env steps/s**",
        "",
        f"`{command}`{' --vector' if args.vector else ''}; {caption}; 1-minute load average {load[0]:.1f} at the "
        f"start of the timed rounds, {load[1]:.1f} at the end. Ratio: the median over rounds of each round's "
        "rate against the reference's rate in the same round.",
        "",
        *markdown_table(["stepping", "median", "min", "max", "vs reference"], rows),
    ]
    out = Path(args.out) if args.out else RESULTS / f"mujoco_stepping_{args.env_id.split('-')[0].lower()}.md"
    write_markdown(out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
