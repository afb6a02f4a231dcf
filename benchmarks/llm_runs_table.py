"""A table of finished ``examples/llm_finetune.py`` runs, from their ``summary.json`` and ``metrics.csv``.

Each row is one run folder: the flags that differ from the example's defaults (read back from the run's
recorded arguments, so the command that made it can be rerun), generations, wall time, held-out accuracy
before and after (all held-out pairs), the held-out subset during training, and the mean RMS(Δθ)/σ.

Run:
    python benchmarks/llm_runs_table.py runs/explore/* --name llm_explore --title "Exploration, 1 thread each"
Writes ``benchmarks/results/{name}.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

from common import RESULTS, markdown_table, write_csv, write_markdown

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import llm_finetune as example  # noqa: E402

#: Arguments that say where and how long, not what was learned: left out of the "flags" column.
BOOKKEEPING = {"output_dir", "exp_name", "time_budget", "generations", "eval_every", "oneshot_baseline"}


def flags(recorded: dict) -> str:
    """The run's flags that differ from the example's defaults, as a command-line fragment."""
    defaults = dataclasses.asdict(example.Args())
    recorded = {"partial_credit": "digits", **recorded}  # runs from before --partial-credit had only digits
    out = []
    for key, value in recorded.items():
        same = (
            tuple(value) == tuple(defaults[key])
            if isinstance(value, list | tuple)
            else defaults.get(key) == value
        )
        if key in BOOKKEEPING or key not in defaults or same:
            continue
        value = " ".join(value) if isinstance(value, list | tuple) else value
        out.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(out) or "(defaults)"


def row(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    with open(folder / "metrics.csv") as fh:
        curve = [r for r in csv.DictReader(fh)]
    subset = [
        f"{100 * float(r['heldout_accuracy']):.0f}" for r in curve if r["heldout_accuracy"] not in ("", "nan")
    ]
    args = summary["args"]
    return dict(
        run=folder.name, flags=flags(args), seed=args["seed"], threads=summary["torch_threads"],
        generations=summary["generations"], wall_s=round(summary["wall_time_s"]),
        before=summary["accuracy_before"], after=summary["accuracy_after"], gain_points=100 * summary["accuracy_gain"],
        oneshot=summary["accuracy_oneshot_base"], rms=summary["mean_step_rms_over_sigma"],
        subset_every=args["eval_every"], subset_pairs=args["eval_subset"], subset_curve=" ".join(subset),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with summary.json)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--title", default="examples/llm_finetune.py runs")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    rows = [row(f) for f in args.runs if (f / "summary.json").is_file()]
    write_csv(RESULTS / f"{args.name}.csv", rows)
    write_markdown(
        RESULTS / f"{args.name}.md",
        [
            f"**{args.title}** (SmolLM2-135M, two-digit addition, held-out exact match, greedy)",
            "",
            *markdown_table(
                [
                    "run",
                    "flags (besides the defaults)",
                    "seed",
                    "threads",
                    "generations",
                    "wall s",
                    "held-out before",
                    "after",
                    "gain (points)",
                    "mean RMS(Δθ)/σ",
                    "held-out subset during training (%)",
                ],
                [
                    (
                        r["run"],
                        f"`{r['flags']}`",
                        r["seed"],
                        r["threads"],
                        r["generations"],
                        r["wall_s"],
                        f"{100 * r['before']:.1f} %",
                        f"{100 * r['after']:.1f} %",
                        f"{r['gain_points']:+.1f}",
                        f"{r['rms']:.2f}",
                        f"{r['subset_curve']} ({r['subset_pairs']} pairs, every {r['subset_every']})",
                    )
                    for r in rows
                ],
            ),  # fmt: skip
            "",
            *([args.note, ""] if args.note else []),
            "`python benchmarks/llm_runs_table.py "
            + " ".join(str(f) for f in args.runs)
            + f' --name {args.name} --title "{args.title}"`',
        ],
    )
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
