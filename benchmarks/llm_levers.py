"""Short comparative runs of ``examples/llm_finetune.py``: which levers make ES fine-tuning learn (issue 22).

Each lever is one run of the example with the same number of generations (256 rows each), seed, threads and
512 held-out pairs, changed in one setting from the reference recipe (``reference`` below): the population
layout (``--group-size``), the shaping of sparse rewards, the update rule, the noise rank, a learning-rate
decay, σ. Runs go one after another (never two at once) and are compared at equal generations, not equal
time, because the machine may be shared (the load average before each run is recorded with its wall time).

Run:
    python benchmarks/llm_levers.py [--generations 20 --jobs 3] [--only reference shaping_sign ...] [--name llm_levers]
Writes ``benchmarks/results/{name}.md`` and ``.csv`` (rewritten after every run, so partial results survive);
each run's own output goes to ``runs/{name}/{lever}/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from common import RESULTS, machine, markdown_table, write_csv, write_markdown

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "llm_finetune.py"

#: The reference recipe, then one change per lever.
REFERENCE = "--population 32 --prompts-per-step 8 --sigma 5e-3 --lr 1e-4 --rank 1".split()
LEVERS: dict[str, list[str]] = {
    "reference": [],
    # the paper's layout at the same 256 rows a generation: 256 members in groups of 8, one prompt a member;
    # lr × √8 keeps RMS(Δθ)/σ (∝ lr / (σ²√N)) as in the reference
    "groups_N256_G8": "--population 256 --group-size 8 --prompts-per-step 32 --shaping zscore --lr 2.8e-4".split(),
    "shaping_sign": "--shaping sign".split(),
    "shaping_prompt_rank": "--shaping prompt_rank".split(),
    "adam": "--optimizer adam --lr 2e-3".split(),
    "rank4": "--rank 4".split(),
    "cosine": "--lr 2e-4 --lr-decay cosine".split(),
    "sigma_2e-3": "--sigma 2e-3 --lr 1.6e-5".split(),  # lr ∝ σ² keeps RMS(Δθ)/σ
}


def run(lever: str, generations: int, name: str, extra: list[str]) -> dict:
    out = ROOT / "runs" / name / lever
    cmd = [sys.executable, str(EXAMPLE), *REFERENCE, *LEVERS[lever], *extra, "--generations", str(generations), "--time-budget", "1e9",
           "--no-oneshot-baseline", "--eval-every", "5", "--output-dir", str(out)]  # fmt: skip
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return dict(
            lever=lever, error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        )
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv") as fh:
        subset = [
            float(r["heldout_accuracy"])
            for r in csv.DictReader(fh)
            if r["heldout_accuracy"] not in ("", "nan")
        ]
    return dict(
        lever=lever, flags=" ".join(LEVERS[lever]) or "(reference)", generations=summary["generations"],
        accuracy_before=summary["accuracy_before"], accuracy_after=summary["accuracy_after"],
        gain_points=100 * summary["accuracy_gain"], mean_step_rms_over_sigma=summary["mean_step_rms_over_sigma"],
        tokens_per_s=summary["tokens_per_s"], peak_rss_mb=summary["peak_rss_mb"], wall_s=time.perf_counter() - started,
        load_before=load, subset_curve=" ".join(f"{100 * a:.0f}" for a in subset),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--generations", type=int, default=20, help="generations per run")
    parser.add_argument("--only", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument("--name", default="llm_levers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (all under the same load)")
    args = parser.parse_args()
    rows: list[dict] = []
    pool = ThreadPoolExecutor(args.jobs)
    futures = [
        pool.submit(run, lever, args.generations, args.name, ["--seed", str(args.seed)])
        for lever in args.only
    ]
    for future in as_completed(futures):
        rows.append(future.result())
        print(json.dumps(rows[-1]), flush=True)
        done = [r for r in rows if "error" not in r]
        if done:
            write_csv(RESULTS / f"{args.name}.csv", done)
        write_markdown(
            RESULTS / f"{args.name}.md",
            [
                f"**ES levers, SmolLM2-135M on two-digit addition: {args.generations} generations a run, "
                f"seed {args.seed}, 2 threads, 512 held-out pairs, greedy** "
                f"({machine()})",
                "",
                "Reference: `"
                + " ".join(REFERENCE)
                + "` (per-prompt z-scores, SGD, noise_reuse 1, all 210 linear matrices).",
                "",
                *markdown_table(
                    [
                        "lever",
                        "change",
                        "generations",
                        "held-out before",
                        "after",
                        "gain (points)",
                        "mean RMS(Δθ)/σ",
                        "wall s",
                        "held-out subset (64) every 5 generations (%)",
                        "peak RSS (MB)",
                        "load avg before",
                    ],
                    [
                        (
                            r["lever"],
                            f"`{r['flags']}`",
                            r["generations"],
                            f"{100 * r['accuracy_before']:.1f} %",
                            f"{100 * r['accuracy_after']:.1f} %",
                            f"{r['gain_points']:+.1f}",
                            f"{r['mean_step_rms_over_sigma']:.3f}",
                            f"{r['wall_s']:.0f}",
                            r["subset_curve"],
                            f"{r['peak_rss_mb']:.0f}",
                            f"{r['load_before']:.1f}",
                        )
                        if "error" not in r
                        else (r["lever"], "failed: " + r["error"], *[""] * 9)
                        for r in rows
                    ],
                ),  # fmt: skip
                "",
                f"`python benchmarks/llm_levers.py --generations {args.generations} --seed {args.seed} --jobs {args.jobs} --only "
                + " ".join(args.only)
                + f" --name {args.name}`",
            ],
        )


if __name__ == "__main__":
    main()
