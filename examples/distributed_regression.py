"""The population sharded over processes: the same script on one process or many, launched by torchrun.

An MLP fits a noisy 1-D regression target with EGGROLL. Nothing in the training code knows about
processes: under ``torchrun`` the trainer initialises ``torch.distributed`` from torchrun's environment,
each process evaluates ``population / world size`` members, the N fitness scores are all-gathered and
every process applies the same update. Only rank 0 prints. The last line ends with a checksum of the
parameters: a 1-process and a 2-process run with the same seed (and the same ``--threads``) print the
same one.

Run:
    python examples/distributed_regression.py                          # one process
    torchrun --nproc_per_node=2 examples/distributed_regression.py     # two processes, one machine
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import tyro
from torch import nn

from eggroll_trainer import EGGROLLTrainer, current_population
from eggroll_trainer.distributed import any_rank, world


@dataclass
class Args:
    seed: int = 0
    """seed of the data, the initial weights and the ES noise"""
    threads: int = 1
    """torch intra-op threads per process"""
    rows: int = 256
    """training points"""
    hidden: int = 64
    """hidden width of the MLP 1 -> hidden -> hidden -> 1"""
    population: int = 256
    """population size N (must be divisible by the number of processes)"""
    rank: int = 4
    """rank r of each member's weight perturbation"""
    sigma: float = 0.02
    """noise scale sigma"""
    lr: float = 0.02
    """learning rate (Adam update rule on the ES estimate)"""
    generations: int = 200
    """generations to run (fewer if --time-budget runs out first)"""
    time_budget: float = 0.0
    """stop after this many seconds (0: no limit); decided by all ranks together"""
    batched: bool = True
    """evaluate the population in one forward per process (else member by member)"""


def parse_args() -> Args:
    """Every field of ``Args`` is a flag (``tyro``): ``--population 256``, ``--batched/--no-batched``."""
    return tyro.cli(Args, description=__doc__)


def make_data(args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.rows, 1, generator=g) * 6 - 3  # (rows, 1)
    y = torch.sin(2 * x) + 0.3 * x + 0.05 * torch.randn(args.rows, 1, generator=g)
    return x, y


def make_model(args: Args) -> nn.Module:
    torch.manual_seed(args.seed)  # the same initial weights on every process
    h = args.hidden
    return nn.Sequential(nn.Linear(1, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    x, y = make_data(args)
    model = make_model(args)

    def fitness(model: nn.Module):
        """Negative MSE. Batched: one forward scores this process's members, inputs (members, rows, 1)."""
        if not args.batched:
            return -((model(x) - y) ** 2).mean().item()
        members = current_population().size
        return -((model(x.expand(members, *x.shape)) - y) ** 2).mean(dim=(1, 2))

    trainer = EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=fitness, population_size=args.population,
        learning_rate=args.lr, sigma=args.sigma, rank=args.rank, seed=args.seed, batched=args.batched,
        optimizer="adam",
    )  # fmt: skip
    rank, size = world()  # known once the trainer exists (under torchrun it initialises torch.distributed)
    log = print if rank == 0 else (lambda *a, **k: None)
    log(f"{size} process(es), {args.population // size} members each, {args.threads} thread(s) per process")
    log(f"start: mse = {-trainer.evaluate_fitness(model):.4f}")

    start, cpu_start = time.perf_counter(), time.process_time()
    while trainer.generation < args.generations:
        # every rank must take the same decision, or one would wait in a generation the others skip
        if args.time_budget and any_rank(time.perf_counter() - start > args.time_budget):
            break
        metrics = trainer.step()
        if trainer.generation % 20 == 0:
            log(f"generation {trainer.generation}: mean member mse = {-metrics['mean_fitness']:.4f}")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    checksum = float(trainer.current_params.double().abs().sum())
    log(f"end: mse = {-trainer.evaluate_fitness(model):.4f}")
    # CPU time of this process alone: what a generation costs it whatever else the machine is running
    log(f"rank 0 used {1000 * cpu / max(trainer.generation, 1):.1f} ms of CPU per generation")
    log(f"{trainer.generation} generations in {seconds:.2f} s = {trainer.generation / seconds:.2f} generations/s, "
        f"parameter checksum {checksum:.10f}")  # fmt: skip


if __name__ == "__main__":
    main()
