"""MuJoCo results table: examples/mujoco_agent.py over several seeds at a fixed environment-step budget.

Each (task, seed) runs the example script with its default settings and ``--total-env-steps BUDGET`` in a
subprocess (one at a time: the runs time themselves and use both cores). Finished runs are reused, so an
interrupted table resumes where it stopped. Writes ``benchmarks/results/mujoco_table.md`` and
``benchmarks/results/mujoco_curves.png``.

    python benchmarks/mujoco_table.py                                   # 4 tasks x 3 seeds x 1 M steps
    python benchmarks/mujoco_table.py --envs HalfCheetah-v5 --seeds 0   # a subset

``--evotorch-python PATH`` adds, on HalfCheetah-v5, EvoTorch's PGPE + ClipUp (linear policy, observation
normalisation) at the same budget, run by that interpreter — a separate virtual environment with
``evotorch`` installed, never this project's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "mujoco_agent.py"

# EvoTorch's MuJoCo recipe (PGPE + ClipUp, linear policy, observation normalisation, the settings of its
# MuJoCo example: popsize 200 growing until 150 k interactions per generation, center lr 0.01125, ClipUp
# max speed 0.015, radius 0.27), stopped at the same environment-step budget. Writes a metrics.csv with the
# example's first columns: eval_return is one episode of the center solution. `--evotorch-actors 0` (the
# default) evaluates in the one process: Ray's actors run at a lower CPU priority, and on a busy shared
# machine they starved (no generation of 200 k steps in 4 minutes).
EVOTORCH_PROGRAM = r"""
import csv, sys, time
import torch
from evotorch.algorithms import PGPE
from evotorch.neuroevolution import GymNE

env_id, seed, budget, out, actors = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.manual_seed(seed)
problem = GymNE(env=env_id, network="Linear(obs_length, act_length)", observation_normalization=True,
                decrease_rewards_by=0.0, num_actors=actors)
searcher = PGPE(problem, popsize=200, center_learning_rate=0.01125, stdev_learning_rate=0.1,
                optimizer="clipup", optimizer_config={"max_speed": 0.015}, radius_init=0.27,
                num_interactions=150_000, popsize_max=3200)
start = time.perf_counter()
with open(out, "w", newline="") as fh:
    writer = csv.writer(fh)
    writer.writerow(["generation", "env_steps", "wall_time_s", "mean_return", "eval_return"])
    for generation in range(1, 10**9):
        searcher.step()
        steps = int(searcher.status["total_interaction_count"])
        wall = time.perf_counter() - start  # the center's evaluation below is not timed or counted
        center = problem.run(searcher.status["center"], update_stats=False, num_episodes=1)
        writer.writerow([generation, steps, round(wall, 2), float(searcher.status["mean_eval"]),
                         float(center["cumulative_reward"])])
        fh.flush()
        if steps >= budget:
            break
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--env-steps", type=int, default=1_000_000, help="budget per run (default: 1 M)")
    parser.add_argument("--runs-dir", default="runs/mujoco_table", help="one sub-directory per run")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--evotorch-python", default=None, help="python of a venv with evotorch installed")
    parser.add_argument(
        "--evotorch-actors", type=int, default=0, help="EvoTorch's num_actors (Ray processes)"
    )
    return parser.parse_args()


def run_agent(env_id: str, seed: int, budget: int, out: Path) -> dict:
    if not (out / "summary.json").exists():
        cmd = [sys.executable, str(SCRIPT), "--env-id", env_id, "--seed", str(seed)]
        cmd += ["--total-env-steps", str(budget), "--output-dir", str(out)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stderr=subprocess.DEVNULL)  # stderr: the progress bar
    return json.loads((out / "summary.json").read_text())


def run_evotorch(python: str, env_id: str, seed: int, budget: int, out: Path, actors: int = 0) -> Path:
    metrics = out / "metrics.csv"
    if not metrics.exists():
        out.mkdir(parents=True, exist_ok=True)
        print(f"EvoTorch PGPE: {env_id} seed {seed}, {actors} actors", flush=True)
        partial = out / "metrics.partial.csv"  # renamed when the run completes, so a rerun resumes cleanly
        subprocess.run(
            [python, "-c", EVOTORCH_PROGRAM, env_id, str(seed), str(budget), str(partial), str(actors)],
            check=True,
        )
        partial.rename(metrics)
    return metrics


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.0f} ± {np.std(values):.0f}"


def main() -> None:
    args = parse_args()
    runs, out_dir = Path(args.runs_dir), Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[tuple[dict, dict[str, np.ndarray]]]] = {}
    for env_id in args.envs:
        for seed in args.seeds:
            run = runs / f"{env_id}__seed{seed}"
            summary = run_agent(env_id, seed, args.env_steps, run)
            results.setdefault(env_id, []).append((summary, read_metrics(run / "metrics.csv")))
    evotorch = []
    if args.evotorch_python:
        for seed in args.seeds:
            path = run_evotorch(
                args.evotorch_python,
                "HalfCheetah-v5",
                seed,
                args.env_steps,
                runs / f"evotorch__HalfCheetah-v5__seed{seed}",
                args.evotorch_actors,
            )
            evotorch.append(read_metrics(path))

    lines = [
        f"**MuJoCo results: EGGROLL, linear policy, {args.env_steps:,} environment steps per run**",
        "",
        f"`python benchmarks/mujoco_table.py --env-steps {args.env_steps} --seeds {' '.join(map(str, args.seeds))}"
        + (" --evotorch-python PATH" if args.evotorch_python else "")
        + "` "
        f"on {platform.machine()} with {os.cpu_count()} CPU cores (shared with other jobs), "
        f"{time.strftime('%Y-%m-%d')}. Defaults of `examples/mujoco_agent.py` (N=32, σ=0.03, Adam lr=0.02, rank 1).",
        "",
        "| task | seeds | eval return at the end (θ, last generation) | saved policy, 5 episodes | wall time (s) | env steps/s | × bare stepping |",
        "|---|---|---|---|---|---|---|",
    ]
    for env_id, entries in results.items():
        summaries = [s for s, _ in entries]
        lines.append(
            f"| {env_id} | {len(entries)} | {mean_std([s['eval_return_last'] for s in summaries])} "
            f"| {mean_std([s['final_eval_mean'] for s in summaries])} "
            f"| {np.mean([s['train_time_s'] for s in summaries]):.0f} "
            f"| {np.mean([s['steps_per_s'] for s in summaries]):,.0f} "
            f"| {np.mean([s['throughput_ratio'] for s in summaries]):.2f} |"
        )
    if evotorch:
        finals = [m["eval_return"][-1] for m in evotorch]
        lines.append(
            f"| HalfCheetah-v5, EvoTorch PGPE+ClipUp | {len(evotorch)} | {mean_std(finals)} | – "
            f"| {np.mean([m['wall_time_s'][-1] for m in evotorch]):.0f} "
            f"| {np.mean([m['env_steps'][-1] / m['wall_time_s'][-1] for m in evotorch]):,.0f} | – |"
        )
    lines += ["", "Mean ± standard deviation over seeds. Curves: `mujoco_curves.png`."]
    (out_dir / "mujoco_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (env_id, entries) in zip(axes[0], results.items()):
        grid = np.linspace(0, args.env_steps, 101)
        curves = [np.interp(grid, m["env_steps"], m["eval_return"], left=np.nan) for _, m in entries]
        for _, m in entries:
            ax.plot(m["env_steps"] / 1e6, m["eval_return"], color="C0", alpha=0.3, lw=0.8)
        ax.plot(
            grid / 1e6, np.nanmean(curves, axis=0), color="C0", lw=2, label=f"EGGROLL ({len(entries)} seeds)"
        )
        if env_id == "HalfCheetah-v5" and evotorch:
            for m in evotorch:
                ax.plot(m["env_steps"] / 1e6, m["eval_return"], color="C1", alpha=0.6, lw=1)
            ax.plot([], [], color="C1", label="EvoTorch PGPE+ClipUp")
        ax.set(title=env_id, xlabel="environment steps (millions)", ylabel="eval return (θ)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "mujoco_curves.png", dpi=110)
    print(f"wrote {out_dir / 'mujoco_table.md'} and {out_dir / 'mujoco_curves.png'}")


if __name__ == "__main__":
    main()
