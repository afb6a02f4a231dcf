"""How large a learning rate plain SGD takes, across σ and N: the rule lr = c·σ²·√N, measured.

With z-scored fitness the ES estimate ĝ = Σᵢ f̃ᵢ Eᵢ / (Nσ) has norm ≈ √(1 + D/P) / σ whatever the scale of
the loss (D = number of trained values, P = N/2 antithetic pairs): a unit-length signal along the gradient
(norm 1/σ) plus the noise of P draws in D dimensions (each entry ≈ 1/(σ√P) where f is locally linear, so
that the two members of a pair score opposite deviations). Plain SGD's step lr·ĝ therefore moves each
weight by about lr/(σ√P) per generation, and writing lr = c·σ²·√N makes that √2·c·σ, the same for every σ
and N.
This script checks the rule on the README's problem (fit sin(x) + 0.3x on 64 points with a 1-64-64-1 tanh
MLP, D = 4353, EGGROLL rank 1, batched, 100 generations, antithetic pairs, z-score shaping):

1. ‖ĝ‖ of the first generation against √(1 + D/P)/σ;
2. the final mean squared error, relative to the initial one, for SGD at c ∈ {0.03, 0.1, 0.3, 1, 3} and
   for Adam at lr = σ/2, over a few (σ, N) — median over model seeds.

Run:
    python benchmarks/lr_scaling.py            # ~1 min on one core
    python benchmarks/lr_scaling.py --quick    # one seed
Writes ``benchmarks/results/lr_scaling{,_quick}.md`` and ``.csv``. Not a timing benchmark.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from common import RESULTS, machine, markdown_table, write_csv, write_markdown
from torch import nn

from eggroll_trainer import EGGROLLTrainer, current_population

SETTINGS = ((0.01, 64), (0.02, 64), (0.05, 64), (0.02, 256), (0.1, 16))  # (σ, N)
FACTORS = (0.03, 0.1, 0.3, 1.0, 3.0)  # c in lr = c·σ²·√N
GENERATIONS = 100

x = torch.linspace(-3, 3, 64).unsqueeze(1)  # (64, 1)
y = torch.sin(x) + 0.3 * x


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def fitness(model: nn.Module) -> torch.Tensor:
    k = current_population().size
    return -((model(x.expand(k, *x.shape)) - y) ** 2).mean(dim=(1, 2))  # (k,)


def trainer_for(model: nn.Module, sigma: float, n: int, lr: float, optimizer: str) -> EGGROLLTrainer:
    return EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=fitness, population_size=n, learning_rate=lr,
        sigma=sigma, seed=0, batched=True, optimizer=optimizer,
    )  # fmt: skip


def estimate_norm(sigma: float, n: int, seed: int) -> float:
    """‖ĝ‖ of the first generation: the step of SGD at lr = 1."""
    model = make_model(seed)
    vector = lambda: torch.nn.utils.parameters_to_vector([p.detach() for p in model.parameters()])  # noqa: E731
    before = vector().clone()
    trainer_for(model, sigma, n, 1.0, "sgd").step()
    return float((vector() - before).norm())


def relative_mse(sigma: float, n: int, lr: float, optimizer: str, seed: int) -> float:
    model = make_model(seed)
    trainer = trainer_for(model, sigma, n, lr, optimizer)
    start = -trainer.evaluate_fitness(model)
    trainer.train(GENERATIONS, verbose=False)
    end = -trainer.evaluate_fitness(model)
    return end / start if math.isfinite(end) else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one model seed instead of three")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = range(1 if args.quick else 3)
    started = time.perf_counter()
    header = machine()
    print(header, flush=True)
    d = sum(p.numel() for p in make_model(0).parameters())
    rows = []
    for sigma, n in SETTINGS:
        norm = statistics.median(estimate_norm(sigma, n, s) for s in seeds)
        predicted = math.sqrt(1 + d / (n // 2)) / sigma
        row = dict(sigma=sigma, N=n, grad_norm=norm, predicted_norm=predicted)
        for c in FACTORS:
            lr = c * sigma**2 * math.sqrt(n)
            row[f"sgd_c{c:g}"] = statistics.median(relative_mse(sigma, n, lr, "sgd", s) for s in seeds)
        row["adam_half_sigma"] = statistics.median(
            relative_mse(sigma, n, sigma / 2, "adam", s) for s in seeds
        )
        rows.append(row)
        print(", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    elapsed = time.perf_counter() - started

    stem = "lr_scaling" + ("_quick" if args.quick else "")
    write_csv(RESULTS / f"{stem}.csv", rows)
    cmd = "python benchmarks/lr_scaling.py" + (" --quick" if args.quick else "")
    cell = lambda v: "diverged" if not math.isfinite(v) or v > 1 else f"{v:.3f}"  # noqa: E731
    lines = [
        f"**Plain SGD's learning rate across σ and N.** `{cmd}` ({elapsed:.0f} s, median over {len(seeds)} "
        f"model seeds) on {header}. The README's problem (1-64-64-1 MLP, D = {d}, EGGROLL rank 1, batched, "
        f"{GENERATIONS} generations, z-score shaping). Final / initial mean squared error for SGD at "
        "lr = c·σ²·√N, and for Adam at lr = σ/2; *diverged*: worse than at the start.",
        "",
        *markdown_table(
            ["σ", "N", "‖ĝ‖ measured", "√(1 + D/P)/σ", *[f"SGD c = {c:g}" for c in FACTORS], "Adam lr = σ/2"],
            [
                [r["sigma"], r["N"], f"{r['grad_norm']:.0f}", f"{r['predicted_norm']:.0f}"]
                + [cell(r[f"sgd_c{c:g}"]) for c in FACTORS]
                + [cell(r["adam_half_sigma"])]
                for r in rows
            ],
        ),
    ]
    write_markdown(RESULTS / f"{stem}.md", lines)
    print(f"wrote {RESULTS / stem}.md and .csv")


if __name__ == "__main__":
    main()
