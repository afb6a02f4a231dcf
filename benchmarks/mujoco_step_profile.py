"""Where the time of one lockstep step goes in a MuJoCo training generation (eggroll_trainer.rl).

Whole training generations (``EGGROLLTrainer`` + ``PopulationRollout``, the task's preset population, 5 center
episodes, 200-step episodes that never end early) run for ``--seconds``; the main process's time is split into

* **stepping**: ``LockstepEnvs.step`` — this process's share of the environments, then waiting for the workers;
* **policy**: the rollout's ``act`` — the normaliser, the population-mode call for the members, the plain call
  for the center, the actions written back (the workers wait meanwhile);
* **other**: the rest of the episode loop, the resets, the trainer's update and the normaliser update.

Then, in the same process, the policy's parts are timed alone in a hot loop (no stepping in between), which is
what they cost when their code and data stay in the cache. A lockstep step costs at least
``stepping / 2 + policy`` on two cores whatever the split, so ``policy`` bounds the speed-up over bare stepping.

    python benchmarks/mujoco_step_profile.py --env-id HalfCheetah-v5 --num-workers 1
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "disable")  # stepping needs no OpenGL
import numpy as np
import torch
from common import machine
from mujoco_stepping import stepping_env, training  # also silences MuJoCo's 'settotalmass' warnings
from torch import nn

import eggroll_trainer.rl.population_rollout as population_rollout
from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.population import current_population
from eggroll_trainer.rl import LockstepEnvs
from eggroll_trainer.rl.presets import preset_for


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-id", default="HalfCheetah-v5")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--hot-calls", type=int, default=2000, help="calls per part in the hot loop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    population = preset_for(args.env_id).population_size
    roll, trainer = training(stepping_env(args.env_id, 200), population, 5, args.num_workers)
    policy = roll.policy

    spent = {"stepping": 0.0, "policy": 0.0}
    steps = [0]
    plain_step, plain_rollout = LockstepEnvs.step, population_rollout.rollout

    def timed_step(self: LockstepEnvs) -> None:
        start = time.perf_counter()
        plain_step(self)
        spent["stepping"] += time.perf_counter() - start
        steps[0] += 1

    def timed_rollout(envs, act, *a, **kw):
        def timed_act(obs: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            out = act(obs)
            spent["policy"] += time.perf_counter() - start
            return out

        return plain_rollout(envs, timed_act, *a, **kw)

    LockstepEnvs.step, population_rollout.rollout = timed_step, timed_rollout
    for _ in range(2):  # warm up: the workers' first messages, the first episodes
        trainer.step()
        roll.end_generation()
    spent.update(stepping=0.0, policy=0.0)
    steps[0], env_steps, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        trainer.step()
        env_steps += roll.end_generation().env_steps
    wall = time.perf_counter() - start
    LockstepEnvs.step, population_rollout.rollout = plain_step, plain_rollout

    # the policy's parts alone, in a hot loop inside population mode (random observations)
    hot: dict[str, float] = {}
    n, rows = population, roll.envs.n

    def part(name: str, fn, *fn_args) -> None:
        t = time.perf_counter()
        for _ in range(args.hot_calls):
            fn(*fn_args)
        hot[name] = (time.perf_counter() - t) / args.hot_calls

    def hot_fitness(model: nn.Module) -> torch.Tensor:
        assert current_population() is not None
        obs = np.random.default_rng(0).normal(size=(rows, roll.envs.obs_dim))
        x = roll._normalise(obs)
        members, center = torch.from_numpy(x[:n]), torch.from_numpy(x[n:])
        with torch.no_grad():
            out_members, out_center = model(members), roll._center(center)
            part("normalise the observations", roll._normalise, obs)
            part("population-mode call (members)", model, members)
            part("plain call (center)", roll._center, center)
            part("write the actions", lambda: (roll._write_actions(out_members, 0, n),
                                               roll._write_actions(out_center, n, rows)))  # fmt: skip
        return torch.zeros(n, dtype=torch.float64)

    roll.close()
    EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=hot_fitness, population_size=population,
                   sigma=0.03, rank=1, seed=0, batched=True).step()  # fmt: skip

    per = lambda seconds: f"{seconds / steps[0] * 1e6:,.0f} µs"  # noqa: E731
    print(
        f"{args.env_id}, {population} members + 5 center episodes, num_workers={args.num_workers}; {machine()}"
    )
    print(
        f"{steps[0]:,} lockstep steps in {wall:.1f} s, {env_steps / wall:,.0f} env steps/s; per lockstep step:"
    )
    print(f"  total {per(wall)}: stepping {per(spent['stepping'])}, policy {per(spent['policy'])}, "
          f"other {per(wall - spent['stepping'] - spent['policy'])}")  # fmt: skip
    print(
        f"the policy's parts alone, hot loop of {args.hot_calls} calls each (sum {sum(hot.values()) * 1e6:,.0f} µs):"
    )
    for name, seconds in hot.items():
        print(f"  {name}: {seconds * 1e6:,.1f} µs")


if __name__ == "__main__":
    main()
