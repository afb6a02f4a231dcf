"""Generations per second of an example on one process vs two (torchrun), on this machine.

Runs each configuration ``--repeats`` times, interleaved, and prints a Markdown table of the medians
(the configurations are ``CONFIGS`` below: for the regression example 1 process × 1 thread, 1 process × 2
threads and 2 processes × 1 thread under ``torchrun``; for the MuJoCo example 1 or 2 processes, with and
without its environment worker processes).

Examples:
    python benchmarks/distributed.py                                   # examples/distributed_regression.py
    python benchmarks/distributed.py --example mujoco --env-id HalfCheetah-v5 --time-budget 60

The regression example reports generations/s on its last line; the MuJoCo example's rate is read from
its ``metrics.csv`` (last ``generation`` / last ``wall_time_s``). The machine load average is printed
with the table: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

ROOT = Path(__file__).resolve().parent.parent
# (label, processes, threads per process, extra flags), per example
CONFIGS = {
    "regression": [
        ("1 process × 1 thread", 1, 1, []),
        ("1 process × 2 threads", 1, 2, []),
        ("2 processes × 1 thread (torchrun)", 2, 1, []),
    ],
    "mujoco": [  # the example pins torch to 1 thread; --num-workers adds env-stepping processes
        ("1 process, --num-workers 0", 1, 1, ["--num-workers", "0"]),
        ("1 process + 1 env worker (default)", 1, 1, ["--num-workers", "1"]),
        ("2 processes (torchrun), --num-workers 0", 2, 1, ["--num-workers", "0"]),
        ("2 processes (torchrun) + 1 env worker each", 2, 1, ["--num-workers", "1"]),
    ],
}


def command(processes: int, script: Path, args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, str(script), *args]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return [torchrun, "--standalone", f"--nproc_per_node={processes}", str(script), *args]


def run_regression(processes: int, threads: int, extra: list[str]) -> dict[str, float]:
    script = ROOT / "examples" / "distributed_regression.py"
    out = run(command(processes, script, ["--threads", str(threads), *extra]), threads)
    match = re.search(r"= ([0-9.]+) generations/s", out)
    if not match:
        raise RuntimeError(f"no generations/s in the output:\n{out}")
    cpu = re.search(r"rank 0 used ([0-9.]+) ms of CPU per generation", out)
    return {"generations/s": float(match.group(1)), "rank 0 CPU ms/generation": float(cpu.group(1))}


def run_mujoco(
    processes: int, threads: int, env_id: str, budget: float, extra: list[str]
) -> dict[str, float]:
    script = ROOT / "examples" / "mujoco_agent.py"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--env-id", env_id, "--time-budget", str(budget), "--output-dir", tmp, *extra]
        run(command(processes, script, args), threads)
        rows = list(csv.DictReader(open(Path(tmp) / "metrics.csv")))
    last = rows[-1]
    return {
        "generations/s": int(last["generation"]) / float(last["wall_time_s"]),
        "env steps/s": int(last["env_steps"]) / float(last["wall_time_s"]),
        "last eval_return": float(last["eval_return"]),
    }


def run(cmd: list[str], threads: int) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--example", choices=["regression", "mujoco"], default="regression")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env-id", default="HalfCheetah-v5", help="mujoco: the environment")
    parser.add_argument("--time-budget", type=float, default=60.0, help="mujoco: seconds per run")
    parser.add_argument("extra", nargs="*", help="further flags for the example (after --)")
    args = parser.parse_args()

    configs = CONFIGS[args.example]
    results: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in configs}
    header = machine()  # with the load average before the runs
    started = time.time()
    for repeat in range(args.repeats):
        for label, processes, threads, flags in configs:
            if args.example == "regression":
                result = run_regression(processes, threads, [*flags, *args.extra])
            else:
                result = run_mujoco(processes, threads, args.env_id, args.time_budget, [*flags, *args.extra])
            results[label].append(result)
            print(f"repeat {repeat + 1}: {label}: {result}", file=sys.stderr)
    load_after = os.getloadavg()

    what = "examples/distributed_regression.py" if args.example == "regression" else (
        f"examples/mujoco_agent.py --env-id {args.env_id} --time-budget {args.time_budget:g}"
    )  # fmt: skip
    print(f"{what} {' '.join(args.extra)}".strip())
    print(f"{header}; {args.repeats} repeats (median), load average {load_after[0]:.1f} after, "
          f"{time.time() - started:.0f} s in all\n")  # fmt: skip
    metrics = list(results[configs[0][0]][0])
    base = statistics.median(r["generations/s"] for r in results[configs[0][0]])
    print("| configuration | " + " | ".join(metrics) + " | vs first row | generations/s of each run |")
    print("|---|" + "---:|" * (len(metrics) + 1) + "---|")
    for label, *_ in configs:
        medians = [statistics.median(r[m] for r in results[label]) for m in metrics]
        runs = ", ".join(f"{r['generations/s']:.2f}" for r in results[label])
        cells = " | ".join(f"{v:,.2f}" if v < 100 else f"{v:,.0f}" for v in medians)
        print(f"| {label} | {cells} | {medians[0] / base:.2f}× | {runs} |")


if __name__ == "__main__":
    main()
