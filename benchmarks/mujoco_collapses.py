"""Are the collapses of HalfCheetah's ``eval_return`` real, or an evaluation bug?

Trains the HalfCheetah preset (as ``examples/mujoco_agent.py`` does, θ playing ``--center-episodes`` episodes
per generation; with ``--seed 0 --num-workers 1`` it plays the same generations as ``make demo``) for
``--time-budget`` seconds. Every center episode is replayed outside the lockstep. Then it looks at every
center episode that scored far below its generation's median (``< --collapse-fraction`` × median, once the
median has passed ``--min-median``):

* **replay**: the same θ, behind the same frozen normaliser, with the same float64 → float32 arithmetic as
  ``PopulationRollout``, plays the same start state in a plain ``gym.make`` environment, one step at a time,
  outside the lockstep. The same return means the lockstep evaluation measured what the policy does;
* **flip**: HalfCheetah's torso pitch (``qpos[2]``, radians) during that replay; past ±π/2 the cheetah is on
  its back;
* **how often**: that θ again on ``--fresh`` fresh start states: the share of its episodes that flip.

and at every **dip**, a generation whose median fell below ``--collapse-fraction`` × the best median before it:
how many of its episodes flipped, and on the same fresh start states its θ, its θ behind the previous
generation's normaliser, and the next generation's θ. ``--gif`` renders the lowest episode of the dips.

Writes ``benchmarks/results/mujoco_collapses.md``.

    python benchmarks/mujoco_collapses.py --time-budget 240 --seed 0 --num-workers 1 --gif collapse.gif
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
from eggroll_trainer.rl.normalisation import deployable_policy
from eggroll_trainer.rl.presets import preset_for
from eggroll_trainer.rl.render import save_gif

mujoco.set_mju_user_warning(lambda msg: None)


def center_actor(policy: nn.Module, normaliser, rows: int, row: int, clip: float = 10.0):
    """obs → action as PopulationRollout plays the center: the float64 normaliser, float32 policy input at row
    ``row`` of a batch of ``rows`` (a product's rounding can depend on the row's position in the batch, the
    kernel's blocking, not on the other rows' values), the action clipped to HalfCheetah's ±1."""
    mean, std = normaliser
    batch = np.zeros((rows, len(mean)), dtype=np.float32)

    def act(obs: np.ndarray) -> np.ndarray:
        batch[row] = np.clip((obs - mean) * (1.0 / std), -clip, clip).astype(np.float32)
        with torch.no_grad():
            return np.clip(policy(torch.from_numpy(batch)).numpy()[row].astype(np.float64), -1.0, 1.0)

    return act


def deployed_actor(policy: nn.Module):
    """obs → action as ``save_gif`` plays a saved policy (float32 observation into the plain layers)."""

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    return act


def replay(env, act, seed: int) -> tuple[float, np.ndarray]:
    """One episode from reset seed ``seed``, one step at a time: its return and torso pitch qpos[2] per step."""
    obs, _ = env.reset(seed=int(seed))
    total, pitch, done = 0.0, [], False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(act(obs))
        total, done = total + reward, terminated or truncated
        pitch.append(float(env.unwrapped.data.qpos[2]))
    return total, np.array(pitch)


def on_back(pitch: np.ndarray) -> float:
    """Share of steps with the torso pitched past π/2: on its back."""
    return float((np.abs(pitch) > np.pi / 2).mean())


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
    parser.add_argument("--max-rows", type=int, default=10, help="low episodes listed (all are counted)")
    parser.add_argument("--gif", default=None, help="a GIF of the lowest center episode of the dips")
    parser.add_argument("--gif-seconds", type=float, default=6.0, help="simulated seconds in the GIF")
    parser.add_argument("--gif-lead", type=float, default=3.0, help="seconds shown before the first flip")
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
    medians = [float(np.median(r)) for _, _, _, r, _ in played]
    mins = [float(np.min(r)) for _, _, _, r, _ in played]

    def center(
        g: int, k: int, seed: int | None = None, normaliser_of: int | None = None
    ) -> tuple[float, np.ndarray]:
        """Generation g's θ (1-based) as its center episode k played it, from that episode's start state or
        from ``seed``, behind its own normaliser or generation ``normaliser_of``'s."""
        theta, normaliser, seeds, returns, _ = played[g - 1]
        if normaliser_of is not None:
            normaliser = played[normaliser_of - 1][1]
        act = center_actor(theta, normaliser, len(returns), k)
        return replay(env, act, seeds[k] if seed is None else seed)

    def fresh(g: int, seeds: np.ndarray, normaliser_of: int | None = None) -> tuple[float, float]:
        """Generation g's θ on fresh start states: the share of episodes that flip, their median return."""
        episodes = [center(g, 0, int(s), normaliser_of) for s in seeds]
        return float(np.mean([on_back(p) > 0 for _, p in episodes])), float(
            np.median([r for r, _ in episodes])
        )

    # every center episode replayed outside the lockstep: does the lockstep evaluation measure the policy?
    replays = {(g, k): center(g, k) for g in range(1, len(played) + 1) for k in range(args.center_episodes)}
    same = sum(replays[g, k][0] == played[g - 1][3][k] for g, k in replays)

    # single low episodes: far below their own generation's median
    rows, checked, low_flipped, low_fresh_flips = [], 0, 0, []
    for g, (_, _, _, returns, members) in enumerate(played, start=1):
        median = medians[g - 1]
        low = [k for k, r in enumerate(returns)
               if median >= args.min_median and r < args.collapse_fraction * median]  # fmt: skip
        for k in low:
            again, pitch = replays[g, k]
            good_pitch = replays[g, int(np.argmax(returns))][1]
            flipped, fresh_median = fresh(g, rng.integers(2**31, size=args.fresh))
            checked += 1
            low_flipped += on_back(pitch) > 0
            low_fresh_flips.append(flipped)
            rows.append((g, f"{members:,.0f}", f"{median:,.0f}", f"{returns[k]:,.0f}", f"{again:,.0f}",
                         "yes" if again == returns[k] else "no", f"{np.abs(pitch).max():.2f} ({on_back(pitch):.0%})",
                         f"{np.abs(good_pitch).max():.2f}", f"{flipped:.0%}", f"{fresh_median:,.0f}"))  # fmt: skip

    # dips: a generation whose median fell far below the best median so far (θ failing on most start states)
    dips, best = [], -np.inf
    for g, median in enumerate(medians, start=1):
        if best >= args.min_median and median < args.collapse_fraction * best:
            seeds = rng.integers(2**31, size=args.fresh)  # the same fresh start states for θ_g and θ_g+1
            flipped, fresh_median = fresh(g, seeds)
            after = fresh(g + 1, seeds) if g < len(played) else None
            # θ_g behind the normaliser θ_g-1 played with (the one its update was computed under)
            old_normaliser = fresh(g, seeds, normaliser_of=g - 1)
            own = sum(on_back(replays[g, k][1]) > 0 for k in range(args.center_episodes))
            dips.append((g, f"{best:,.0f}", f"{median:,.0f}", f"{own} of {args.center_episodes}", f"{flipped:.0%}",
                         f"{fresh_median:,.0f}", f"{old_normaliser[0]:.0%}, {old_normaliser[1]:,.0f}",
                         "–" if after is None else f"{after[0]:.0%}",
                         "–" if after is None else f"{after[1]:,.0f}", f"{medians[g]:,.0f}" if g < len(played) else "–"))  # fmt: skip
        best = max(best, median)

    gif_line = []
    if args.gif:  # the lowest center episode of the dips (else of the low episodes), as save_gif plays it
        dip_gens = [d[0] for d in dips] or [r[0] for r in rows]
        if dip_gens:
            g, k = min(((g, k) for g in dip_gens for k in range(args.center_episodes)),
                       key=lambda gk: played[gk[0] - 1][3][gk[1]])  # fmt: skip
            theta, normaliser, seeds, returns, _ = played[g - 1]
            space = env.action_space
            deployed = deployable_policy(theta, normaliser, 10.0, (space.low, space.high))
            ret, pitch = replay(env, deployed_actor(deployed), seeds[k])
            back = np.flatnonzero(np.abs(pitch) > np.pi / 2)
            dt = env.unwrapped.dt
            start = max(0.0, back[0] * dt - args.gif_lead) if len(back) else 0.0
            save_gif(
                deployed,
                make_env,
                args.gif,
                seconds=args.gif_seconds,
                seed=int(seeds[k]),
                start_seconds=start,
            )
            gif_line = ["", f"GIF (`--gif`): generation {g}'s θ from center episode {k + 1}'s start state (lockstep "
                        f"return {returns[k]:,.0f}), played through its saved-policy layers as `save_gif` plays it: "
                        f"return {ret:,.0f}, max pitch {np.abs(pitch).max():.2f} rad, on its back "
                        f"{on_back(pitch):.0%} of the steps" + (f", first at {back[0] * dt:.2f} s" if len(back) else "")
                        + f"; simulated seconds {start:.2f}–{start + args.gif_seconds:.2f}."]  # fmt: skip
    lines = [
        f"**HalfCheetah-v5: {args.center_episodes} center episodes per generation, the low ones replayed**",
        "",
        f"`python benchmarks/mujoco_collapses.py --time-budget {args.time_budget:g} --seed {args.seed} "
        f"--num-workers {args.num_workers}`; "
        f"{caption}. {len(played)} generations in {train_s:.0f} s (preset: {hp.population_size} members, ARS' "
        f"HalfCheetah settings); best generation median {max(medians):,.0f}; generations whose lowest episode "
        f"was below {args.collapse_fraction:g} × their median (median ≥ {args.min_median:,.0f}): "
        f"{len({r[0] for r in rows})}, with {checked} low episodes; generations whose median was below "
        f"{args.collapse_fraction:g} × the best median before them: {len(dips)}. Every center episode of the run "
        f"replayed outside the lockstep: {same} of {len(replays)} identical returns.",
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
            rows[: args.max_rows],
        )  # fmt: skip
        more = (
            f"The first {args.max_rows} of {len(rows)} rows (`--max-rows`). "
            if len(rows) > args.max_rows
            else ""
        )
        lines += ["", f"{more}Of the {checked} low episodes, {low_flipped} went onto the back (pitch past π/2); "
                  f"their θ flipped on a median {np.median(low_fresh_flips):.0%} of {args.fresh} fresh start states "
                  f"(range {min(low_fresh_flips):.0%}–{max(low_fresh_flips):.0%})."]  # fmt: skip
    else:
        lines.append("No low episode in this run.")
    lines += ["", f"Per dip (a generation's median below {args.collapse_fraction:g} × the best median before it): "
              f"how many of its {args.center_episodes} episodes flipped; on the same {args.fresh} fresh start states "
              "(share that flip, median return): its θ, its θ behind the previous generation's normaliser (the one "
              "the update that made θ was computed under), and the next generation's θ; the next generation's median.", ""]  # fmt: skip
    if dips:
        lines += markdown_table(
            ["gen", "best median before", "median", "its episodes that flipped", "θ: flips in fresh", "θ: fresh median",
             "θ, previous normaliser: flips, median", "next θ: flips in fresh", "next θ: fresh median", "next median"],
            dips,
        )  # fmt: skip
    else:
        lines.append("No dip in this run.")
    lines += gif_line
    lines += ["", "Per generation (median / min of the center episodes): "
              + ", ".join(f"{m:.0f}/{n:.0f}" for m, n in zip(medians, mins))]  # fmt: skip
    write_markdown(Path(args.out), lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
