"""Population forward and whole generation on an accelerator, in the paper's setting (arXiv 2511.16652, Fig. 2a).

* **linear 8192**: one ``nn.Linear(8192, 8192)`` (no bias), N = 1024 members, one input row each, rank 1 —
  where the paper's EGGROLL forward runs at 91 % of plain batch inference (naive ES: 0.41 %);
* the MLP rows of ``population_forward.py`` (64-256-256-8 at N = 1024, 64-1024-1024-8 at N = 256, tanh).

Each repetition times plain inference of the same N rows (the unperturbed model, ``torch.no_grad()``) and then
the candidate, every call followed by a device synchronisation; a ratio is the median of per-repetition ratios.
*forward*: the steady population-mode forward (the third to fifth forwards inside one fitness call, as in
``population_forward.py``); *generation*: the whole ``trainer.step()`` (noise, forward, shaping, update —
through fp32 master copies for 16-bit weights). Goal (issue 27): plain / forward ≥ 0.9 for linear 8192.
Peak memory: what one call adds to the device's allocated memory (``torch.cuda.max_memory_allocated``).

Run through ``population_forward.py``:
    python benchmarks/population_forward.py --device cuda --dtype bfloat16
    python benchmarks/population_forward.py --device cpu --smoke     # tiny sizes: the script runs
Writes ``benchmarks/results/population_forward_<device>_<dtype>.md`` and ``.csv`` (a smoke run writes
only where ``--out-dir`` says).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS,
    Case,
    device_peak_mib,
    device_tag,
    markdown_table,
    median_ratio,
    on_device,
    round_robin,
    synced,
    timed_repeats,
    write_csv,
    write_markdown,
)
from torch import nn

from eggroll_trainer import EGGROLLTrainer, current_population

SIGMA, LR, SEED, FORWARD_GOAL = 0.01, 1e-3, 0, 0.9


@dataclass(frozen=True)
class Workload:
    name: str
    widths: tuple[int, ...]
    population: int
    bias: bool = True


WORKLOADS = (
    Workload("linear 8192 (paper)", (8192, 8192), 1024, bias=False),
    Workload("64-256-256-8", (64, 256, 256, 8), 1024),
    Workload("64-1024-1024-8", (64, 1024, 1024, 8), 256),
)
SMOKE = (
    Workload("linear 256 (smoke)", (256, 256), 64, bias=False),
    Workload("16-32-4 (smoke)", (16, 32, 4), 32),
)


def make_model(w: Workload, device: torch.device, dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    for i, (n, m) in enumerate(zip(w.widths[:-1], w.widths[1:])):
        layers += [nn.Linear(n, m, bias=w.bias)] + ([nn.Tanh()] if i < len(w.widths) - 2 else [])
    return nn.Sequential(*layers).to(device=device, dtype=dtype)


class Fitness:
    """−MSE of member i's output row i; with ``repeats`` > 0 the forward is repeated and timed (steady)."""

    def __init__(self, w: Workload, device: torch.device, dtype: torch.dtype, repeats: int = 0) -> None:
        g = torch.Generator().manual_seed(SEED + 1)
        self.x = torch.randn(w.population, w.widths[0], generator=g).to(device=device, dtype=dtype)  # (N, in)
        self.y = torch.randn(w.population, w.widths[-1], generator=g).to(
            device=device, dtype=dtype
        )  # (N, out)
        self.device, self.repeats, self.steady_s = device, repeats, []

    def __call__(self, model: nn.Module) -> torch.Tensor:
        info = current_population()
        x, y = self.x[info.start : info.start + info.size], self.y[info.start : info.start + info.size]
        out = model(x)
        timed_repeats(synced(lambda: model(x), self.device), self.repeats, self.steady_s)
        return -((out - y).float() ** 2).mean(-1)  # (N,)


def setup(w: Workload, device: torch.device, dtype: torch.dtype, repeats: int = 0) -> tuple[Any, ...]:
    model = make_model(w, device, dtype)
    fitness = Fitness(w, device, dtype, repeats)
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=w.population,
                             learning_rate=LR, sigma=SIGMA, rank=1, seed=SEED, batched=True)  # fmt: skip

    @torch.no_grad()
    def plain() -> None:
        model(fitness.x)

    return model, fitness, trainer, synced(plain, device)


def bench(workloads: tuple[Workload, ...], device: torch.device, dtype: torch.dtype, reps: int) -> list[dict]:
    cases, steady = [], []
    for w in workloads:
        _, _, trainer, plain = setup(w, device, dtype)
        cases.append(Case(f"{w.name} generation", plain, synced(trainer.step, device), calls=1))
        _, fitness, trainer, plain = setup(w, device, dtype, repeats=4)
        per_rep: list[float] = []

        def forward(trainer=trainer, fitness=fitness, per_rep=per_rep) -> None:
            fitness.steady_s.clear()
            trainer.step()
            per_rep.append(statistics.mean(fitness.steady_s))

        cases.append(Case(f"{w.name} forward", plain, forward, calls=1))
        steady.append(per_rep)
    print(f"timing {len(cases)} cases, {reps} round-robin repetitions ...", flush=True)
    round_robin(cases, reps)
    rows = []
    for i, w in enumerate(workloads):
        gen, fwd, per_rep = cases[2 * i], cases[2 * i + 1], steady[i][1:]  # [0]: the warm-up step
        model, _, trainer, plain = setup(w, device, dtype)
        trainer.step()
        rows.append(dict(
            workload=w.name, N=w.population, params=sum(p.numel() for p in model.parameters()),
            plain_ms=statistics.median(gen.plain_s) * 1e3, forward_ms=statistics.median(per_rep) * 1e3,
            plain_over_forward=median_ratio(fwd.plain_s, per_rep), generation_ms=statistics.median(gen.fn_s) * 1e3,
            generation_over_plain=median_ratio(gen.fn_s, gen.plain_s),
            plain_peak_mib=device_peak_mib(plain, device), generation_peak_mib=device_peak_mib(trainer.step, device),
        ))  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def write(rows: list[dict], out_dir: Path, tag: str, caption: str, command: str, elapsed: float) -> Path:
    write_csv(out_dir / f"population_forward_{tag}.csv", rows)
    mib = lambda v: "—" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [
        f"**Population forward and whole generations on {caption.split(';')[0].split(' (')[0]}.** `{command}` "
        f"({elapsed / 60:.1f} min) on {caption}.",
        "",
        "One input row per member, rank 1; ratios are medians of per-repetition ratios, each call synchronised. "
        "*forward*: the steady population forward (third to fifth forwards of a fitness call); *generation*: "
        "the whole `trainer.step()`. Goal (issue 27, the paper's 91 %): plain / forward ≥ 0.9 for linear 8192.",
        "",
    ]
    lines += markdown_table(
        ["workload", "N", "params", "plain (ms)", "forward (ms)", "plain / forward", "generation (ms)",
         "generation / plain", "plain peak (MiB)", "generation peak (MiB)"],
        [(r["workload"], r["N"], f"{r['params'] / 1e6:.1f} M", f"{r['plain_ms']:.3f}", f"{r['forward_ms']:.3f}",
          f"{r['plain_over_forward']:.2f}", f"{r['generation_ms']:.2f}", f"{r['generation_over_plain']:.2f}×",
          mib(r["plain_peak_mib"]), mib(r["generation_peak_mib"])) for r in rows],
    )  # fmt: skip
    path = out_dir / f"population_forward_{tag}.md"
    write_markdown(path, lines)
    return path


def main(ns: argparse.Namespace) -> None:
    """Run from ``population_forward.py`` with ``--device`` (``ns``: its parsed arguments)."""
    device, dtype = torch.device(ns.device), getattr(torch, ns.dtype)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    start = time.perf_counter()
    caption = on_device(device)
    print(caption, flush=True)
    workloads = SMOKE if ns.smoke else WORKLOADS
    rows = bench(workloads, device, dtype, ns.reps or (2 if ns.smoke else 20))
    out_dir = ns.out_dir if ns.out_dir is not None else (None if ns.smoke else RESULTS)
    if out_dir is None:
        print("smoke run: no result file written (give --out-dir to keep one)")
        return
    command = f"python benchmarks/population_forward.py --device {ns.device} --dtype {ns.dtype}"
    command += " --smoke" if ns.smoke else ""
    path = write(rows, out_dir, device_tag(device, dtype), caption, command, time.perf_counter() - start)
    print(f"wrote {path}")
