"""How fast can 33 MuJoCo environments be stepped in lockstep on this machine? (eggroll_trainer.rl)

Random actions, no policy: one bare environment (the throughput reference of examples/mujoco_agent.py),
gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv``, and ``eggroll_trainer.rl.LockstepEnvs`` in one process and split
over the main process and one worker. Each is timed for ``--seconds`` and the list is repeated
``--repeats`` times (the machine is shared: look at the spread). Writes
``benchmarks/results/mujoco_stepping.md``.

    python benchmarks/mujoco_stepping.py --env-id HalfCheetah-v5
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")  # stepping needs no OpenGL
import gymnasium as gym
import numpy as np
from common import write_markdown

from eggroll_trainer.rl import LockstepEnvs, bare_steps_per_s

ROOT = Path(__file__).resolve().parents[1]


def timed(step, n: int, seconds: float) -> float:
    """Env steps per second of ``step()`` (which steps ``n`` environments) over ``seconds``."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            step()
        steps += 50 * n
    return steps / (time.perf_counter() - start)


def vector(kind: str, make_env, n: int, seconds: float) -> float:
    cls = gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv
    envs = cls([make_env] * n)
    envs.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (64, n, envs.single_action_space.shape[0]))
    i = iter(range(10**12))
    rate = timed(lambda: envs.step(actions[next(i) % 64]), n, seconds)
    envs.close()
    return rate


def lockstep(make_env, n: int, seconds: float, split: bool) -> float:
    envs = LockstepEnvs(make_env, n, num_workers=1 if split else 0, probe_every=10**9)
    envs.reset(np.arange(n))
    actions = np.random.default_rng(0).uniform(-1, 1, (64, n, envs.act_dim))
    i = iter(range(10**12))

    def step() -> None:
        envs.act[:] = actions[next(i) % 64]
        envs.step()

    rate = timed(step, n, seconds)  # the first episode: an equal split, never re-dealt (probe_every)
    envs.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-id", default="HalfCheetah-v5")
    parser.add_argument("--envs", type=int, default=33, help="N = 32 members + the center")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mujoco_stepping.md"))
    args = parser.parse_args()
    # No time limit: the timed stretch never hits an episode end (HalfCheetah never terminates).
    make_env = functools.partial(gym.make, args.env_id, disable_env_checker=True, max_episode_steps=10**9)
    cases = {
        "one bare environment (the reference)": lambda: bare_steps_per_s(make_env, args.seconds, 0),
        f"SyncVectorEnv({args.envs})": lambda: vector("sync", make_env, args.envs, args.seconds),
        f"AsyncVectorEnv({args.envs})": lambda: vector("async", make_env, args.envs, args.seconds),
        f"LockstepEnvs({args.envs}), one process": lambda: lockstep(make_env, args.envs, args.seconds, False),
        f"LockstepEnvs({args.envs}), main + 1 worker": lambda: lockstep(
            make_env, args.envs, args.seconds, True
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for name, run in cases.items():
            rates[name].append(run())
            print(f"{name}: {rates[name][-1]:,.0f} steps/s", flush=True)
    load.append(os.getloadavg()[0])
    lines = [
        f"**Stepping {args.envs} × {args.env_id} with random actions, env steps/s**",
        "",
        f"`python benchmarks/mujoco_stepping.py --env-id {args.env_id} --seconds {args.seconds:g} "
        f"--repeats {args.repeats}`, {os.cpu_count()} CPU cores shared with other jobs "
        f"(1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end).",
        "",
        "| stepping | median | min | max |",
        "|---|---:|---:|---:|",
    ]
    for name, values in rates.items():
        lines.append(f"| {name} | {np.median(values):,.0f} | {min(values):,.0f} | {max(values):,.0f} |")
    write_markdown(Path(args.out), lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
