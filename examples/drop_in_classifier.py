"""EGGROLL as a drop-in optimizer: the same PyTorch training loop, Adam swapped for EGGROLLTrainer.

A small MLP classifies scikit-learn's 8×8 digits (1797 images, shipped with scikit-learn). The script
trains it three ways and reports test accuracy and wall time for each:

1. ``torch.optim.Adam`` with a standard ``opt.zero_grad()`` / ``opt.step(closure)`` loop;
2. ``EGGROLLTrainer`` in **the same loop, unchanged** — each ``step`` calls the closure once per member;
3. the **population variant** of that loop (``batched=True``): the closure sees inputs with a leading
   population dimension and returns one loss per member, so one forward scores the whole population.

``--sweep`` adds a grid over population size N and rank r (population variant) to show how accuracy
moves with both. Results go to ``--output-dir``: ``results.csv``, ``results.md``, ``curves.csv`` and
``drop_in_classifier.png``.

Run: python examples/drop_in_classifier.py [--sweep] [--quick]
"""

from __future__ import annotations

import csv
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import tyro
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from eggroll_trainer import EGGROLLTrainer, current_population


@dataclass
class Args:
    exp_name: str = "drop_in_classifier"
    """name of this experiment (names the default output dir)"""
    seed: int = 0
    """seed of the data split, the initial weights, the minibatch order and the ES noise"""
    output_dir: str = ""
    """where results and the plot go (default: runs/{exp_name}__{seed}__{time})"""
    threads: int = 1
    """torch intra-op threads (1 is fastest for a model this small)"""
    epochs: int = 10
    """passes over the training set, the same for every optimizer"""
    batch_size: int = 64
    """minibatch size"""
    hidden: int = 32
    """hidden width of the MLP 64 -> hidden -> 10"""
    adam_lr: float = 1e-2
    """Adam learning rate"""
    es_population: int = 256
    """EGGROLL population size N (one generation per minibatch)"""
    es_rank: int = 4
    """rank r of each member's weight perturbation"""
    es_sigma: float = 0.05
    """noise scale sigma"""
    es_lr: float = 1e-2
    """EGGROLL learning rate (Adam update rule on the ES estimate)"""
    es_optimizer: str = "adam"
    """update rule applied to the ES estimate: sgd, adam, adamw or clipup"""
    sequential: bool = True
    """also run EGGROLL sequentially in the unchanged loop (slow: N closures/step)"""
    sweep: bool = False
    """add a sweep over population sizes and ranks (population variant)"""
    sweep_populations: tuple[int, ...] = (32, 128, 512)
    """population sizes N of the sweep"""
    sweep_ranks: tuple[int, ...] = (1, 4, 16)
    """ranks r of the sweep"""
    sweep_seeds: int = 3
    """noise seeds per sweep point (seed, seed+1, ...): mean and min-max are reported"""
    quick: bool = False
    """tiny budget for the smoke test (2 epochs, N=32, a 2x2 sweep, 1 seed)"""


def parse_args() -> Args:
    """Every field of ``Args`` is a flag (``tyro``): ``--es-population 128``, ``--sweep/--no-sweep``,
    ``--sweep-ranks 1 4 16``."""
    args = tyro.cli(Args, description=__doc__)
    if args.quick:
        args = dataclasses.replace(
            args, epochs=2, es_population=32, sweep_populations=(8, 32), sweep_ranks=(1, 4), sweep_seeds=1
        )
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------ data
def load_data(seed: int) -> tuple[torch.Tensor, ...]:
    """8×8 digits scaled to [0, 1]; a stratified 75/25 train/test split."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=seed, stratify=y
    )
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # (rows, 64)
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # (rows,)
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


def make_model(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # every optimizer starts from the same weights
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(-1) == y).float().mean())


# ------------------------------------------------------------------------------ training loops
def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader) -> None:
    """The standard PyTorch loop. It is the same for Adam and for EGGROLLTrainer.

    (ES never reads ``.grad``: with EGGROLL the ``backward()`` below is wasted work, but it is harmless,
    and it is what an existing loop already contains.)"""
    model.train()
    for xb, yb in loader:
        # opt.step calls the closure within this iteration, so reading xb, yb from the loop is safe.
        def closure():
            loss = F.cross_entropy(model(xb), yb)  # noqa: B023
            loss.backward()
            return loss

        opt.zero_grad()
        opt.step(closure)


def train_epoch_population(model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader) -> None:
    """The same loop for ``EGGROLLTrainer(..., batched=True)``: the closure scores K members at once.

    Inside the closure the model takes inputs with a leading population dimension and returns member
    i's output at index i; shared data is expanded (a view, no copy). No ``backward()``."""
    model.train()
    for xb, yb in loader:

        def closure():
            k = current_population().size  # members in this forward (all N unless chunk_size is set)
            logits = model(xb.expand(k, *xb.shape))  # noqa: B023  (K, B, 10)
            targets = yb.repeat(k)  # noqa: B023  (K·B,)
            losses = F.cross_entropy(logits.flatten(0, 1), targets, reduction="none")  # (K·B,)
            return losses.view(k, -1).mean(dim=1)  # (K,) one loss per member

        opt.zero_grad()
        opt.step(closure)


# ------------------------------------------------------------------------------------- a run
def run(
    label: str,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    epoch_fn: Callable[[nn.Module, torch.optim.Optimizer, DataLoader], None],
    args: Args,
    data: tuple[torch.Tensor, ...],
) -> dict:
    """Train a fresh model; wall time counts training only (not the per-epoch test evaluation)."""
    x_train, y_train, x_test, y_test = data
    model = make_model(args.hidden, args.seed)
    opt = make_optimizer(model)
    loader = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),  # same minibatches for every run
    )
    curve = [(0, 0.0, accuracy(model, x_test, y_test))]
    wall = 0.0
    bar = tqdm(range(args.epochs), desc=label, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        epoch_fn(model, opt, loader)
        wall += time.perf_counter() - start
        curve.append((epoch + 1, wall, accuracy(model, x_test, y_test)))
        bar.set_postfix(test_acc=f"{curve[-1][2]:.3f}", wall=f"{wall:.1f}s")
    bar.close()
    return {
        "method": label,
        "test_accuracy": curve[-1][2],
        "wall_time_s": wall,
        "curve": curve,
        "curves": {args.seed: curve},
    }


def eggroll(
    args: Args, population: int, rank: int, batched: bool, seed: int
) -> Callable[[nn.Module], EGGROLLTrainer]:
    # The one line that changes: Adam(model.parameters(), lr=...) -> EGGROLLTrainer(...).
    # fitness_fn=None: every step gets the loop's closure (a loss, lower is better).
    return lambda model: EGGROLLTrainer(
        model.parameters(), model, None, population_size=population, sigma=args.es_sigma, rank=rank,
        seed=seed, lr=args.es_lr, optimizer=args.es_optimizer, batched=batched,
    )  # fmt: skip


# ----------------------------------------------------------------------------------- outputs
COLUMNS = [
    "method",
    "loop",
    "population",
    "rank",
    "epochs",
    "noise_seeds",
    "test_accuracy",
    "test_accuracy_range",
    "wall_time_s",
]


def write_tables(rows: list[dict], out: Path) -> str:
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    cell = lambda r, c: (
        f"{r[c]:.3f}" if c == "test_accuracy" else f"{r[c]:.1f}" if c == "wall_time_s" else str(r[c])
    )
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in rows]
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    with open(out / "curves.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["method", "loop", "population", "rank", "noise_seed", "epoch", "wall_time_s", "test_accuracy"]
        )
        for r in rows:
            for seed, curve in r["curves"].items():
                writer.writerows(
                    [r["method"], r["loop"], r["population"], r["rank"], seed, *point] for point in curve
                )
    return table


def plot(rows: list[dict], args: Args, path: Path) -> None:
    main_rows = [r for r in rows if r["loop"] != "sweep"]
    sweep_rows = [r for r in rows if r["loop"] == "sweep"]
    fig, axes = plt.subplots(1, 3 if sweep_rows else 2, figsize=(15 if sweep_rows else 10, 4), squeeze=False)
    styles = {"unchanged": "-", "population": "--"}
    for r in main_rows:
        epochs, wall, acc = zip(*r["curve"])
        label = f"{r['method']} ({r['loop']})"
        axes[0, 0].plot(epochs, acc, styles.get(r["loop"], "-"), marker="o", ms=3, label=label)
        axes[0, 1].plot(wall[1:], acc[1:], styles.get(r["loop"], "-"), marker="o", ms=3, label=label)
    axes[0, 0].set(xlabel="epoch", ylabel="test accuracy", title="Same loop, same minibatches")
    axes[0, 1].set(xlabel="training wall time [s] (log)", ylabel="test accuracy", xscale="log", title="Cost")
    axes[0, 1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0, 0].legend(fontsize=8)
    if sweep_rows:
        ax = axes[0, 2]
        ax.set_xscale("log")
        ranks = sorted({r["rank"] for r in sweep_rows})
        for j, rank in enumerate(ranks):
            pts = sorted(
                (r["population"], r["test_accuracy"], r["accuracies"])
                for r in sweep_rows
                if r["rank"] == rank
            )
            pop, mean, accs = zip(*pts)
            err = [[m - min(a) for m, a in zip(mean, accs)], [max(a) - m for m, a in zip(mean, accs)]]
            shift = 1.04 ** (j - (len(ranks) - 1) / 2)  # small horizontal offset so the bars do not overlap
            ax.errorbar(
                [p * shift for p in pop], mean, yerr=err, marker="o", capsize=3, label=f"EGGROLL r={rank}"
            )
        ax.set_xticks(sorted({r["population"] for r in sweep_rows}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        adam = next((r for r in main_rows if r["method"] == "Adam"), None)
        if adam is not None:
            ax.axhline(adam["test_accuracy"], color="k", ls=":", label="Adam (backprop)")
        ax.set(xlabel="population size N (log)", ylabel="test accuracy")
        ax.set_title(
            f"After {args.epochs} epochs: mean, min-max of {sweep_rows[0]['noise_seeds']} noise seeds"
        )
        ax.legend(fontsize=8)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.suptitle(f"8×8 digits, MLP 64-{args.hidden}-10, batch {args.batch_size}, seed {args.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir or f"runs/{args.exp_name}__{args.seed}__{int(time.time())}")
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.seed)
    print(f"digits: {len(data[0])} train / {len(data[2])} test images; output -> {out}")

    n, r = args.es_population, args.es_rank
    common = {"epochs": args.epochs, "noise_seeds": 1, "test_accuracy_range": "-"}
    adam = lambda model: torch.optim.Adam(model.parameters(), lr=args.adam_lr)
    res = run("Adam", adam, train_epoch, args, data)
    rows = [{**res, "loop": "unchanged", "population": 1, "rank": "-", **common}]
    if args.sequential:
        res = run("EGGROLL", eggroll(args, n, r, batched=False, seed=args.seed), train_epoch, args, data)
        rows.append({**res, "loop": "unchanged", "population": n, "rank": r, **common})
    res = run(
        "EGGROLL", eggroll(args, n, r, batched=True, seed=args.seed), train_epoch_population, args, data
    )
    rows.append({**res, "loop": "population", "population": n, "rank": r, **common})
    if args.sweep:
        # Same data, initial weights and minibatches; only the ES noise seed varies between repeats.
        grid = [(pn, pr) for pr in args.sweep_ranks for pn in args.sweep_populations]
        seeds = range(args.seed, args.seed + args.sweep_seeds)
        for pn, pr in tqdm(grid, desc="sweep"):
            reps = [
                run(
                    f"EGGROLL N={pn} r={pr} seed={s}",
                    eggroll(args, pn, pr, True, s),
                    train_epoch_population,
                    args,
                    data,
                )
                for s in seeds
            ]
            accs = [rep["test_accuracy"] for rep in reps]
            rows.append({
                "method": "EGGROLL", "loop": "sweep", "population": pn, "rank": pr, **common,
                "noise_seeds": len(reps), "test_accuracy": float(np.mean(accs)),
                "test_accuracy_range": f"{min(accs):.3f}-{max(accs):.3f}",
                "wall_time_s": float(np.mean([rep["wall_time_s"] for rep in reps])),
                "accuracies": accs, "curves": {s: rep["curve"] for s, rep in zip(seeds, reps)},
            })  # fmt: skip

    print(write_tables(rows, out))
    plot(rows, args, out / "drop_in_classifier.png")
    print(
        "wrote",
        ", ".join(
            str(out / name) for name in "results.csv results.md curves.csv drop_in_classifier.png".split()
        ),
    )


if __name__ == "__main__":
    main()
