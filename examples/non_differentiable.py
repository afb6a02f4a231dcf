"""Training what a gradient cannot: an int8 network with sign activations, fitness = accuracy.

The network classifies scikit-learn's 8×8 digits with

* **int8 weights** (and int32 biases) — the forward pass rounds every parameter to its integer grid;
* **sign activations** (−1, 0, +1) — a step function;
* **fitness = classification accuracy** (argmax) on a minibatch — a count, not a loss.

Every piece has derivative zero almost everywhere (round, sign) or no derivative at all (argmax), so
backpropagation gets no signal: the script prints that the accuracy has no ``grad_fn`` and that the
gradient of the cross-entropy through the same network is exactly zero, and it runs Adam on that
cross-entropy for the same number of steps to show that it never moves. EGGROLL only evaluates the
network, so it trains it directly. The trained weights are exported as ``torch.int8`` and the test set is
classified again in pure integer arithmetic, with predictions identical to the training-time forward.

Outputs in ``--output-dir``: ``history.csv``, ``results.md``, ``model_int8.pt``, ``non_differentiable.png``.

Run: python examples/non_differentiable.py [--quick]
"""

from __future__ import annotations

import csv
import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import tyro
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm.auto import tqdm

from eggroll_trainer import EGGROLLTrainer, current_population


@dataclass
class Args:
    exp_name: str = "non_differentiable"
    """name of this experiment (names the default output dir)"""
    seed: int = 0
    """seed of the data split, the initial weights, the minibatches and the ES noise"""
    output_dir: str = ""
    """where results and the plot go (default: runs/{exp_name}__{seed}__{time})"""
    threads: int = 1
    """torch intra-op threads (1 is fastest for a model this small)"""
    generations: int = 300
    """ES generations (and Adam steps for the gradient baseline)"""
    batch_size: int = 256
    """training images scored per generation (a fresh minibatch each time)"""
    hidden: int = 64
    """hidden width of the network 64 -> hidden -> 10"""
    population: int = 256
    """population size N"""
    rank: int = 4
    """rank r of each member's weight perturbation"""
    sigma: float = 0.1
    """noise scale sigma (the int8 grid step is 2^-7 ≈ 0.008)"""
    lr: float = 0.05
    """learning rate (Adam update rule on the ES estimate)"""
    optimizer: str = "adam"
    """update rule applied to the ES estimate: sgd, adam, adamw or clipup"""
    eval_every: int = 10
    """generations between evaluations of the full train and test sets"""
    quick: bool = False
    """tiny budget for the smoke test (30 generations)"""


def parse_args() -> Args:
    """Every field of ``Args`` is a flag (``tyro``): ``--population 128``, ``--quick/--no-quick``."""
    args = tyro.cli(Args, description=__doc__)
    if args.quick:
        args = dataclasses.replace(args, generations=30)
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(seed: int) -> tuple[torch.Tensor, ...]:
    """Raw 8×8 digits — integer pixel values 0..16, kept as integers — and a stratified 75/25 split."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # (rows, 64), whole numbers 0..16
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # (rows,)
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


# ----------------------------------------------------------------------------------- the model
#: The integer grid step. A power of two keeps the float forward exact: every product and sum below
#: is a whole multiple of 2^-7 smaller than 2^17, well inside float32's 24-bit mantissa.
SCALE = 2.0**-7


def quantize(w: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Integer codes of ``w`` on the grid ``SCALE`` (round-to-nearest, saturating)."""
    return torch.clamp(torch.round(w / SCALE), lo, hi)


class Int8Linear(nn.Linear):
    """``nn.Linear`` whose forward only ever sees int8 weights and int32 biases (times ``SCALE``).

    The float ``weight``/``bias`` are the master copy that ES updates; no straight-through estimator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = quantize(self.weight, -127, 127) * SCALE
        b = quantize(self.bias, -(2**31), 2**31 - 1) * SCALE
        return F.linear(x, w, b)

    def integer_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize(self.weight, -127, 127).to(torch.int8), quantize(self.bias, -(2**31), 2**31 - 1).to(
            torch.int32
        )


class Sign(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)  # −1, 0, +1: derivative 0 everywhere it exists


def make_model(hidden: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(Int8Linear(64, hidden), Sign(), Int8Linear(hidden, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(-1) == y).float().mean())


@torch.no_grad()
def integer_predict(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Deployment: classify with the exported int8/int32 tensors, integer arithmetic only."""
    (w1, b1), (w2, b2) = model[0].integer_params(), model[2].integer_params()
    h = torch.sign(x.to(torch.int32) @ w1.to(torch.int32).T + b1)  # (rows, hidden) in {-1, 0, 1}
    return (h @ w2.to(torch.int32).T + b2).argmax(-1)  # (rows,)


# ----------------------------------------------------------------------------- gradient probe
def autograd_probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, str]:
    """What backprop sees from the same objective: nothing."""
    acc = (model(x).argmax(-1) == y).float().mean()
    try:
        acc.backward()
        acc_msg = "backward() ran (unexpected)"
    except RuntimeError as err:
        acc_msg = f"RuntimeError: {err}"
    print(f"accuracy objective: requires_grad={acc.requires_grad}, grad_fn={acc.grad_fn}")
    print(f"  acc.backward() -> {acc_msg}")

    model.zero_grad()
    loss = F.cross_entropy(model(x), y)  # a differentiable-looking surrogate through the same network
    loss.backward()
    norms = {name: float(p.grad.norm()) for name, p in model.named_parameters()}
    grad_fn = type(loss.grad_fn).__name__
    print(f"cross-entropy through round/sign: loss={float(loss.detach()):.4f}, grad_fn={grad_fn}")
    for name, norm in norms.items():
        print(f"  ‖∂loss/∂{name}‖ = {norm}")
    model.zero_grad()
    return {
        "accuracy: grad_fn": str(acc.grad_fn),
        "accuracy: backward()": acc_msg.splitlines()[0],
        "cross-entropy: largest gradient norm": f"{max(norms.values())}",
    }


# ----------------------------------------------------------------------------------- outputs
def plot(history: list[dict[str, float]], args: Args, path: Path) -> None:
    column = lambda key: [h[key] for h in history]
    gens = column("generation")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    ax.plot(gens, column("es_test_accuracy"), label="EGGROLL, fitness = accuracy (test)")
    ax.plot(gens, column("es_train_accuracy"), alpha=0.6, label="EGGROLL (train)")
    ax.plot(gens, column("adam_test_accuracy"), label="Adam on cross-entropy (test): gradient = 0")
    ax.axhline(0.1, color="k", ls=":", lw=1, label="chance")
    ax.set(
        xlabel="generation / Adam step",
        ylabel="accuracy",
        ylim=(0, 1),
        title="int8 weights, sign activations",
    )
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(gens[1:], column("population_mean_fitness")[1:], label="population mean")
    ax.plot(gens[1:], column("population_best_fitness")[1:], label="population best")
    ax.set(xlabel="generation", ylabel="minibatch accuracy", title="Fitness of the population")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    es = f"N={args.population}, r={args.rank}, σ={args.sigma}, lr={args.lr} ({args.optimizer})"
    fig.suptitle(f"{es}, fitness on {args.batch_size} images per generation, seed {args.seed}")
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
    x_train, y_train, x_test, y_test = load_data(args.seed)
    print(f"digits: {len(x_train)} train / {len(x_test)} test images; output -> {out}")

    model = make_model(args.hidden, args.seed)
    probe = autograd_probe(model, x_train, y_train)

    # The minibatch of the current generation; the population-mode fitness reads it.
    batch: dict[str, torch.Tensor] = {}

    def fitness(model: nn.Module) -> torch.Tensor:
        """Accuracy of every member on this generation's minibatch: (K,), higher is better."""
        k = current_population().size
        logits = model(batch["x"].expand(k, *batch["x"].shape))  # (K, B, 10)
        return (logits.argmax(-1) == batch["y"]).float().mean(dim=1)

    opt = EGGROLLTrainer(
        model.parameters(), model, fitness, population_size=args.population, sigma=args.sigma,
        rank=args.rank, seed=args.seed, lr=args.lr, optimizer=args.optimizer, batched=True,
    )  # fmt: skip

    # Baseline: the same network and minibatches, Adam on the cross-entropy (its gradient is all zeros).
    baseline = make_model(args.hidden, args.seed)
    adam = torch.optim.Adam(baseline.parameters(), lr=args.lr)

    order = torch.Generator().manual_seed(args.seed)
    history: list[dict[str, float]] = []
    wall = 0.0

    def record(generation: int, metrics: dict | None) -> None:
        history.append({
            "generation": generation,
            "wall_time_s": wall,
            "population_mean_fitness": metrics["mean_fitness"] if metrics else float("nan"),
            "population_best_fitness": metrics["best_fitness"] if metrics else float("nan"),
            "es_train_accuracy": accuracy(model, x_train, y_train),
            "es_test_accuracy": accuracy(model, x_test, y_test),
            "adam_test_accuracy": accuracy(baseline, x_test, y_test),
        })  # fmt: skip

    record(0, None)
    bar = tqdm(range(1, args.generations + 1), desc="generations")
    for generation in bar:
        idx = torch.randperm(len(x_train), generator=order)[: args.batch_size]
        batch["x"], batch["y"] = x_train[idx], y_train[idx]

        start = time.perf_counter()
        metrics = opt.step()
        wall += time.perf_counter() - start

        adam.zero_grad()
        F.cross_entropy(baseline(batch["x"]), batch["y"]).backward()
        adam.step()

        if generation % args.eval_every == 0 or generation == args.generations:
            record(generation, metrics)
            bar.set_postfix(
                fitness=f"{metrics['mean_fitness']:.3f}", test_acc=f"{history[-1]['es_test_accuracy']:.3f}"
            )
    bar.close()

    # Deployment check: integer-only inference with the exported int8 weights.
    int_pred = integer_predict(model, x_test)
    with torch.no_grad():
        float_pred = model(x_test).argmax(-1)
    int_acc = float((int_pred == y_test).float().mean())
    identical = bool(torch.equal(int_pred, float_pred))
    torch.save(
        {f"{i}.{k}": v for i in (0, 2) for k, v in zip(("weight", "bias"), model[i].integer_params())},
        out / "model_int8.pt",
    )

    final = history[-1]
    summary = {
        "generations": args.generations,
        "population N / rank r": f"{args.population} / {args.rank}",
        "EGGROLL test accuracy": f"{final['es_test_accuracy']:.3f}",
        "EGGROLL train accuracy": f"{final['es_train_accuracy']:.3f}",
        "EGGROLL training wall time [s]": f"{wall:.1f}",
        "Adam on cross-entropy, test accuracy": (
            f"{final['adam_test_accuracy']:.3f} (start {history[0]['adam_test_accuracy']:.3f})"
        ),
        "int8 export, integer-only test accuracy": f"{int_acc:.3f}",
        "integer predictions identical to training forward": str(identical),
        **probe,
    }
    table = "| quantity | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in summary.items())
    (out / "results.md").write_text(table)
    with open(out / "history.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot(history, args, out / "non_differentiable.png")
    print(table)
    print(
        "wrote",
        ", ".join(
            str(out / name) for name in "results.md history.csv model_int8.pt non_differentiable.png".split()
        ),
    )


if __name__ == "__main__":
    main()
