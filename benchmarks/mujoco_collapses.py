"""Are the single-episode collapses of HalfCheetah's ``eval_return`` real, or an evaluation bug?

Trains the HalfCheetah preset (as ``examples/mujoco_agent.py`` does, θ playing ``--center-episodes`` episodes
per generation) for ``--time-budget`` seconds, then looks at every center episode that scored far below its
generation's median (``< --collapse-fraction`` × median, once the median has passed ``--min-median``):

* **replay**: the same θ, behind the same frozen normaliser, with the same float64 → float32 arithmetic as
  ``PopulationRollout``, plays the same start state in a plain ``gym.make`` environment, one step at a time,
  outside the lockstep. The same return means the lockstep evaluation measured what the policy does;
* **flip**: HalfCheetah's torso pitch (``qpos[2]``, radians) during that replay; past ±π/2 the cheetah is on
  its back;
* **how often**: that θ again on ``--fresh`` fresh start states: the share of its episodes that flip.

Writes ``benchmarks/results/mujoco_collapses.md``.

    python benchmarks/mujoco_collapses.py --time-budget 90 --seed 1
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")
import gymnasium as gym
import mujoco
import numpy as np
import torch
from common import RESULTS, machine, markdown_table, write_markdown
from torch import nn

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.rl import PopulationRollout
from eggroll_trainer.rl.presets import preset_for

mujoco.set_mju_user_warning(lambda msg: None)


def replay(
    env, policy: nn.Module, normaliser, seed: int, rows: int, row: int, clip: float = 10.0
) -> tuple[float, float, float]:
    """(return, max |torso pitch|, share of steps on its back) of one episode, as PopulationRollout plays it.
    The observation is row ``row`` of a batch of ``rows`` (the center's rows): a product's rounding can
    depend on the row's position in the batch (the kernel's blocking), not on the other rows' values."""
    mean, std = normaliser
    obs, _ = env.reset(seed=int(seed))
    total, pitch, done = 0.0, [], False
    batch = np.zeros((rows, len(mean)), dtype=np.float32)
    while not done:
        batch[row] = np.clip((obs - mean) * (1.0 / std), -clip, clip).astype(np.float32)
        with torch.no_grad():
            action = np.clip(policy(torch.from_numpy(batch)).numpy()[row].astype(np.float64), -1.0, 1.0)
        obs, reward, terminated, truncated, _ = env.step(action)
        total, done = total + reward, terminated or truncated
        pitch.append(float(env.unwrapped.data.qpos[2]))
    pitch = np.abs(np.array(pitch))
    return total, float(pitch.max()), float((pitch > np.pi / 2).mean())


def train(args, hp, make_env) -> tuple[list, float]:
    """The preset's run; per generation θ (a copy), its frozen normaliser, the center seeds and returns."""
    policy = nn.Linear(17, 6)
    nn.init.zeros_(policy.weight)
    nn.init.zeros_(policy.bias)
    roll = PopulationRollout(make_env, policy, hp.population_size, seed=args.seed, num_workers=args.num_workers,
                             center_episodes=args.center_episodes)  # fmt: skip
    trainer = EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=roll.fitness,
                             population_size=hp.population_size, learning_rate=hp.lr, sigma=hp.sigma, rank=hp.rank,
                             elite_k=hp.elite_k, seed=args.seed, optimizer=hp.optimizer,
                             fitness_shaping=hp.fitness_shaping, batched=True)  # fmt: skip
    played = []  # per generation: θ, its frozen normaliser, the center seeds, returns
    start, gen_time = time.perf_counter(), 0.0
    while time.perf_counter() - start + gen_time < args.time_budget:
        t0 = time.perf_counter()
        normaliser, seeds, theta = (
            (roll.stats.mean, roll.stats.std),
            roll.seeds[-args.center_episodes :],
            copy.deepcopy(policy),
        )
        trainer.step()
        gen = roll.end_generation()
        played.append((theta, normaliser, seeds, gen.center_returns, float(gen.returns.mean())))
        gen_time = time.perf_counter() - t0
        print(
            f"gen {len(played)}: center {np.round(gen.center_returns)}, members' mean {gen.returns.mean():.0f}",
            flush=True,
        )
    train_s = time.perf_counter() - start
    roll.close()
    return played, train_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--time-budget", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--center-episodes", type=int, default=5)
    parser.add_argument("--num-workers", type=int, default=0, help="0: one core, the machine is shared")
    parser.add_argument("--collapse-fraction", type=float, default=0.5)
    parser.add_argument("--min-median", type=float, default=1000.0)
    parser.add_argument(
        "--fresh", type=int, default=20, help="fresh episodes of each collapsed generation's θ"
    )
    parser.add_argument("--out", default=str(RESULTS / "mujoco_collapses.md"))
    parser.add_argument(
        "--played", default=None, help="a file of the played generations: loaded if it exists, else written"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    caption = machine()
    hp = preset_for("HalfCheetah-v5")
    make_env = functools.partial(gym.make, "HalfCheetah-v5", disable_env_checker=True)
    if args.played and Path(args.played).exists():
        played, train_s = torch.load(args.played, weights_only=False)
    else:
        played, train_s = train(args, hp, make_env)
        if args.played:
            torch.save((played, train_s), args.played)

    env = make_env()
    rng = np.random.default_rng(12345)
    rows, flips_all, checked = [], [], 0
    # every center episode replayed outside the lockstep: does the lockstep evaluation measure the policy?
    same = [replay(env, theta, norm, seed, len(r), k)[0] == r[k] for theta, norm, seeds, r, _ in played
            for k, seed in enumerate(seeds)]  # fmt: skip
    for g, (theta, normaliser, seeds, returns, members) in enumerate(played, start=1):
        median = float(np.median(returns))
        low = [
            k
            for k, r in enumerate(returns)
            if median >= args.min_median and r < args.collapse_fraction * median
        ]
        for k in low:
            again, pitch, back = replay(env, theta, normaliser, seeds[k], len(returns), k)
            good = int(np.argmax(returns))
            _, good_pitch, _ = replay(env, theta, normaliser, seeds[good], len(returns), good)
            fresh = [
                replay(env, theta, normaliser, s, len(returns), 0)
                for s in rng.integers(2**31, size=args.fresh)
            ]
            flipped = np.mean([b > 0 for _, _, b in fresh])
            checked += 1
            flips_all.append(flipped)
            rows.append((g, f"{members:,.0f}", f"{median:,.0f}", f"{returns[k]:,.0f}", f"{again:,.0f}", "yes" if again == returns[k] else "no",
                         f"{pitch:.2f} ({back:.0%})", f"{good_pitch:.2f}", f"{flipped:.0%}",
                         f"{np.median([r for r, _, _ in fresh]):,.0f}"))  # fmt: skip
    medians = [float(np.median(r)) for _, _, _, r, _ in played]
    mins = [float(np.min(r)) for _, _, _, r, _ in played]
    lines = [
        f"**HalfCheetah-v5: {args.center_episodes} center episodes per generation, the low ones replayed**",
        "",
        f"`python benchmarks/mujoco_collapses.py --time-budget {args.time_budget:g} --seed {args.seed} "
        f"--num-workers {args.num_workers}`; "
        f"{caption}. {len(played)} generations in {train_s:.0f} s (preset: {hp.population_size} members, ARS' "
        f"HalfCheetah settings); best generation median {max(medians):,.0f}; generations whose lowest episode "
        f"was below {args.collapse_fraction:g} × their median (median ≥ {args.min_median:,.0f}): "
        f"{len({r[0] for r in rows})}, with {checked} low episodes. Every center episode of the run replayed "
        f"outside the lockstep: {sum(same)} of {len(same)} identical returns.",
        "",
        "Per low episode: the generation's members' mean return, the median of its center episodes, the low "
        "episode's return; the replay of that episode outside "
        "the lockstep (same θ, normaliser and start state) and whether it is identical; the largest torso "
        "pitch |qpos[2]| of the replay in radians (share of steps past π/2, on its back), and of the "
        f"generation's best episode; the same θ on {args.fresh} fresh start states: share of episodes that flip "
        "and median return.",
        "",
    ]
    if rows:
        lines += markdown_table(
            ["gen", "members' mean", "median", "low episode", "replayed", "identical", "max pitch (on back)", "best episode's max pitch",
             f"flips in {args.fresh} fresh", "fresh median"],
            rows,
        )  # fmt: skip
    else:
        lines.append("No low episode in this run.")
    lines += ["", "Per generation (median / min of the center episodes): "
              + ", ".join(f"{m:.0f}/{n:.0f}" for m, n in zip(medians, mins))]  # fmt: skip
    write_markdown(Path(args.out), lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
