"""MuJoCo agents trained by EGGROLL, the whole population playing in lockstep (``eggroll_trainer.rl``).

Each generation the N members play one episode each and the unperturbed ("center") policy θ plays
``--center-episodes`` episodes, all at once: at each step the members' observations (N, obs_dim) go through
the policy in population mode in one call.
``PopulationRollout`` masks finished members, normalises observations (running mean/std shared by the
population, frozen during a generation) and subtracts the alive bonus from the training fitness, never from
the logged returns; ``EGGROLLTrainer`` moves θ with the task's preset (``eggroll_trainer.rl.presets``: Adam on
centered ranks, or ARS' top-b pairs and SGD). ``eval_return`` is the median of the center's episodes.
The run keeps its ``--keep-best`` best policies by ``eval_return``; at the end they and the last policy play
the same ``--select-episodes`` fresh episodes and the best mean is saved (``eggroll_trainer.rl.select_best``).
Outputs in ``--output-dir``: ``metrics.csv``, ``learning_curve.png``, ``summary.json``, ``policy.pt`` (that
policy: a plain ``nn.Sequential``, normaliser included: ``torch.load(path, weights_only=False)(obs)``),
``policy_last.pt`` (θ at the end) and, with ``--gif``, ``policy.gif`` (``eggroll_trainer.rl.render``).

    python examples/mujoco_agent.py --env-id Hopper-v5 --time-budget 600 --gif
    torchrun --standalone --nproc_per_node=2 examples/mujoco_agent.py --num-workers 0  # two processes share N
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

# MuJoCo picks its OpenGL backend when it is imported, and a broken one (MUJOCO_GL=osmesa without libOSMesa)
# fails the import. Stepping needs no OpenGL: import with rendering off; `save_gif` tries your choice (else EGL,
# then OSMesa) in child processes (eggroll_trainer.rl.render).
os.environ["GIF_MUJOCO_GL"] = os.environ.get("GIF_MUJOCO_GL", os.environ.get("MUJOCO_GL", ""))
os.environ["MUJOCO_GL"] = "disable"
import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mujoco
import numpy as np
import torch
import tyro
from torch import nn
from tqdm.auto import tqdm

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.distributed import any_rank, init_from_torchrun, world
from eggroll_trainer.rl import BestPolicies, PopulationRollout, bare_steps_per_s, select_best
from eggroll_trainer.rl.presets import Preset, preset_for
from eggroll_trainer.rl.render import save_gif

GL_BACKENDS = [os.environ["GIF_MUJOCO_GL"]] if os.environ["GIF_MUJOCO_GL"] else ["egl", "osmesa"]
# Every MuJoCo v5 model compiles with a deprecated 'settotalmass' attribute, once per environment.
mujoco.set_mju_user_warning(lambda msg: None if "settotalmass" in msg else print(f"MuJoCo: {msg}"))


@dataclass
class Args:
    env_id: str = "HalfCheetah-v5"  # gymnasium MuJoCo task ('Ant' is short for 'Ant-v5')
    seed: int = 0  # seeds the ES noise and the episodes' start states
    time_budget: float | None = (
        None  # seconds of training, wall time (unset: the preset's, unless a step budget)
    )
    total_env_steps: int | None = None  # stop after this many env steps
    output_dir: str | None = None  # where outputs go (unset: runs/{env}__mujoco_agent__{seed}__{time})
    gif: bool = False  # render the trained policy to policy.gif (offscreen: MUJOCO_GL=egl or osmesa)
    gif_seconds: float = 10.0  # simulated seconds in the GIF (≥ 20 frames per simulated second)
    # Hyperparameters: unset ones come from the task's preset (eggroll_trainer.rl.presets.PRESETS).
    population_size: int | None = None  # members N per generation, N/2 antithetic pairs
    sigma: float | None = None  # noise scale σ
    lr: float | None = None  # learning rate on the ES estimate
    optimizer: str | None = None  # "adam", "sgd" (ARS' step: lr = 2·σ·α), "clipup", ...
    fitness_shaping: str | None = None  # "centered_rank", "zscore" or "raw" (with elite_k: ARS' scaling)
    rank: int | None = None  # rank r of each member's weight perturbation A Bᵀ/√r
    elite_k: int | None = None  # ARS top-b: only the elite_k best antithetic pairs move θ (0: every pair)
    hidden: int | None = None  # hidden width of a tanh MLP policy (0: a linear policy)
    alive_bonus: float | None = None  # subtracted from the training fitness per step taken
    normalize: bool | None = None  # normalise observations (running mean/std shared by the population)
    max_episode_steps: int | None = None  # episode length limit (unset: the task's, 1000 for most)
    obs_clip: float = 10.0  # normalised observations are clipped to ±obs_clip
    num_workers: int = 1  # worker processes stepping environments beside the main process (0: none)
    center_episodes: int = (
        5  # episodes of θ per generation, in the same lockstep; eval_return is their median
    )
    keep_best: int = 3  # policies kept by eval_return, re-evaluated at the end with the last one
    select_episodes: int = 5  # fresh episodes of each kept policy at the end; the best mean is saved
    eval_episodes: int = 5  # other fresh episodes: the final evaluation of the saved policy
    calibration_s: float = 2.0  # seconds of bare single-env stepping timed at start and end (reference)


def make_policy(obs_dim: int, act_dim: int, hidden: int) -> nn.Module:
    """Linear (or a tanh MLP); the last layer starts at zero, so the first center policy does nothing."""
    if hidden:
        layers = [nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, act_dim)]
    else:
        layers = [nn.Linear(obs_dim, act_dim)]
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


def plot_curve(rows: list[dict[str, float]], title: str, out: Path) -> None:
    col = lambda key: np.array([r[key] for r in rows], dtype=float)  # noqa: E731
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x, label in ((axes[0], col("env_steps") / 1e6, "environment steps (millions)"),
                         (axes[1], col("wall_time_s"), "wall time (s)")):  # fmt: skip
        ax.fill_between(
            x, col("eval_min"), col("eval_max"), alpha=0.25, lw=0, label="θ: min–max of its episodes"
        )
        ax.plot(x, col("eval_return"), label="θ: median of its episodes (eval_return)")
        ax.plot(x, col("mean_return"), alpha=0.7, label="population mean")
        ax.set(xlabel=label, ylabel="episode return")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    plt.close(fig)


def main(args: Args) -> None:
    env_id = args.env_id if "-v" in args.env_id else f"{args.env_id}-v5"
    hp = preset_for(env_id, **{f.name: getattr(args, f.name, None) for f in dataclasses.fields(Preset)})
    # Without either limit the preset's wall budget applies; a step budget alone runs until it is spent.
    time_budget = args.time_budget or (None if args.total_env_steps else hp.time_budget)
    total_env_steps = args.total_env_steps or math.inf
    out = Path(args.output_dir or f"runs/{env_id}__mujoco_agent__{args.seed}__{int(time.time())}")
    init_from_torchrun()  # under torchrun the processes share the population (one process: nothing)
    lead = world()[0] == 0  # the first process prints and writes the outputs
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the policy is tiny; more threads only fight the environment workers
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()

    env_kwargs = dict(hp.env_kwargs, disable_env_checker=True)
    if args.max_episode_steps:
        env_kwargs["max_episode_steps"] = args.max_episode_steps
    make_env = functools.partial(gym.make, env_id, **env_kwargs)
    bare_start = bare_steps_per_s(make_env, args.calibration_s, args.seed)
    probe = make_env()
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    policy = make_policy(obs_dim, act_dim, hp.hidden)
    rollout = PopulationRollout(make_env, policy, hp.population_size, seed=args.seed, reward_shift=hp.alive_bonus,
                                normalize=hp.normalize, obs_clip=args.obs_clip, num_workers=args.num_workers,
                                center_episodes=args.center_episodes)  # fmt: skip
    trainer = EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=rollout.fitness,
                             population_size=hp.population_size, learning_rate=hp.lr, sigma=hp.sigma, rank=hp.rank,
                             elite_k=hp.elite_k, seed=args.seed, optimizer=hp.optimizer,
                             fitness_shaping=hp.fitness_shaping, batched=True)  # fmt: skip
    if lead:
        print(f"{env_id}: obs {obs_dim}, act {act_dim}, {hp}; bare {bare_start:,.0f} steps/s; to {out}")

    fields = ["generation", "env_steps", "wall_time_s", "mean_return", "eval_return", "eval_min", "eval_max",
              "max_return", "mean_length", "eval_length", "steps_per_s", "generation_s", "worker_envs"]  # fmt: skip
    rows: list[dict[str, float]] = []
    best = BestPolicies(keep=args.keep_best)  # the policies θ played in the best-scoring generations
    env_steps, gen_time, start = 0, 0.0, time.perf_counter()
    bar = tqdm(total=round(time_budget or total_env_steps), unit="s" if time_budget else "step",
               dynamic_ncols=True, disable=not lead)  # fmt: skip
    with open(out / "metrics.csv" if lead else os.devnull, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        while env_steps < total_env_steps:
            elapsed = time.perf_counter() - start
            if time_budget and rows and any_rank(elapsed + gen_time > time_budget):
                break  # the next generation would end past the budget (on any process: all stop together)
            trainer.step()  # plays the generation (rollout.fitness), then updates θ
            gen = rollout.end_generation()  # the whole population's episodes; the normaliser is updated
            env_steps += gen.env_steps
            wall = time.perf_counter() - start
            gen_time = wall - elapsed
            row = dict(
                generation=trainer.generation, env_steps=env_steps, wall_time_s=round(wall, 2),
                mean_return=round(float(gen.returns.mean()), 2), eval_return=round(gen.center_return, 2),
                eval_min=round(float(gen.center_returns.min()), 2), eval_max=round(float(gen.center_returns.max()), 2),
                max_return=round(float(gen.returns.max()), 2), mean_length=float(gen.lengths.mean()),
                eval_length=gen.center_length, steps_per_s=round(env_steps / wall), generation_s=round(gen_time, 3),
                worker_envs=int(rollout.envs.n - rollout.envs.shares[0]),
            )  # fmt: skip
            rows.append(row)
            writer.writerow(row)
            if lead:  # the policy that scored eval_return: θ before this generation's update
                best.offer(gen.center_return, f"generation {trainer.generation}", rollout.played_center)
            fh.flush()
            bar.update((int(min(wall, time_budget)) if time_budget else min(env_steps, bar.total)) - bar.n)
            bar.set_postfix_str(f"gen {trainer.generation}, eval_return {gen.center_return:.0f}")
    bar.close()
    train_time = time.perf_counter() - start
    if not lead:  # every process holds the same θ: the first one evaluates, saves and reports it
        rollout.close()
        return

    # The kept policies and the last one play the same fresh episodes; the best mean is saved, then evaluated
    # on other fresh episodes (the selection episodes favour the policy that won them).
    last = rollout.deployable()  # θ after the last update, with the normaliser it was trained with
    candidates = {**best.policies(), "last": last}
    chosen, selection = select_best(
        candidates, lambda p: rollout.evaluate(args.select_episodes, seed=10_000 * (args.seed + 1), policy=p)
    )
    deployed = candidates[chosen]
    torch.save(deployed, out / "policy.pt")
    torch.save(last, out / "policy_last.pt")
    final = rollout.evaluate(args.eval_episodes, seed=10_000 * (args.seed + 1) + 5_000, policy=deployed)
    rollout.close()
    bare_end = bare_steps_per_s(make_env, args.calibration_s, args.seed)
    bare = (bare_start + bare_end) / 2
    kind = f"MLP({hp.hidden})" if hp.hidden else "linear"
    plot_curve(rows, f"{env_id}: EGGROLL, {kind} policy, N={hp.population_size} (seed {args.seed})", out)
    summary = dict(
        env_id=env_id, seed=args.seed, **dataclasses.asdict(hp), generations=trainer.generation, env_steps=env_steps,
        train_time_s=round(train_time, 1), steps_per_s=round(env_steps / train_time),
        bare_steps_per_s_start=round(bare_start), bare_steps_per_s_end=round(bare_end),
        throughput_ratio=round(env_steps / train_time / bare, 3), eval_return_last=rows[-1]["eval_return"],
        saved_policy=chosen, selection_mean={k: round(float(v.mean()), 2) for k, v in selection.items()},
        selection_episodes=args.select_episodes, kept_eval_return=best.scores(),
        final_eval_mean=round(float(final.mean()), 2), final_eval_std=round(float(final.std()), 2),
        final_eval_episodes=len(final), load_avg_start=load_start, load_avg_end=os.getloadavg(),
        args=dataclasses.asdict(args),
    )  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.gif:  # rendered offscreen in child processes, one per GL backend tried
        try:
            save_gif(deployed, make_env, out / "policy.gif", seconds=args.gif_seconds, seed=args.seed,
                     backends=GL_BACKENDS)  # fmt: skip
            print(f"wrote {out / 'policy.gif'}")
        except RuntimeError as err:
            print(f"policy.gif not written: {err}. Install EGL (libegl1) or OSMesa (libosmesa6), or set MUJOCO_GL; "
                  "training results are unaffected.")  # fmt: skip
    print(f"{trainer.generation} generations, {env_steps:,} env steps in {train_time:.0f} s: {summary['steps_per_s']:,} steps/s "
          f"= {summary['throughput_ratio']:.2f}x bare single-env stepping ({bare_start:,.0f} / {bare_end:,.0f} steps/s at start / end)\n"
          f"eval_return (θ, last generation) {rows[-1]['eval_return']:.1f}; saved policy ({chosen}, best of "
          f"{len(candidates)} over {args.select_episodes} episodes) over {len(final)} other episodes "
          f"{summary['final_eval_mean']:.1f} ± {summary['final_eval_std']:.1f}; outputs in {out}")  # fmt: skip


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n\n")[0]))
