"""The shared noise table: size vs quality, build cost vs fresh Gaussians, and the estimate vs N and r.

EGGROLL members read their noise as strided windows of one table of N(0, 1) values (DESIGN.md §2). A table
smaller than a parameter's population span (pairs × values per member) makes the windows of one generation
overlap: member k+1's factors are member k's shifted by ``stride`` values. This script measures what that
costs, on a small MLP (16-32-32-4, 1,732 parameters) with a fitness **linear** in θ, so the true gradient g
is known exactly:

    f(θ) = Σ_layers ⟨C_l, layer_l(I)⟩ = Σ_l ⟨C_lᵀ, W_l⟩ + ⟨1ᵀC_l, b_l⟩ = g·θ

(each layer is called on the identity matrix in population mode — the real batched path). One generation with
SGD and lr = 1 moves θ by the ES estimate ĝ; we report cos(ĝ, g), mean ± std over seeds.

1. table size sweep at N = 16384, r = 1: cosine, window stride/overlap, and the correlation between members'
   noise, next to the same estimator fed fresh ``torch.randn`` factors (an infinite table);
2. build time and memory of the table vs drawing fresh Gaussians every generation (the benchmark MLPs of
   ``population_forward.py``);
3. cosine at N ∈ {64, 256, 1024} and r ∈ {1, 4, 16} with the default table, against the i.i.d.
   full-rank reference 1/√(1 + (D+1)/P) (P = N/2 antithetic pairs, D = |θ|).

Run:
    python benchmarks/noise_table.py            # under a minute on 2 idle cores
    python benchmarks/noise_table.py --quick    # fewer seeds and sizes
Writes ``benchmarks/results/noise_table{,_quick}.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from common import RESULTS, machine, median_time, write_csv, write_markdown
from torch import nn
from torch.nn.functional import cosine_similarity

from eggroll_trainer import EGGROLLTrainer, current_population
from eggroll_trainer.noise import NoiseSpec, ParamNoise, num_pairs
from eggroll_trainer.noise.table import default_table_size, hash_key, noise_table

WIDTHS = (16, 32, 32, 4)
CHUNK = 4096  # members per population-mode call (bounded memory at large N)


@dataclass
class Args:
    quick: bool
    seeds: int
    out_dir: Path


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer seeds, sizes and populations")
    p.add_argument("--seeds", type=int, default=0, help="seeds per configuration (default 8, quick 3)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    ns = p.parse_args()
    return Args(ns.quick, ns.seeds or (3 if ns.quick else 8), ns.out_dir)


# ------------------------------------------------------------------------------------- the problem
class LinearProblem:
    """A small MLP and a fitness linear in all its parameters, with its exact gradient ``g``."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        layers = [nn.Linear(n, m) for n, m in zip(WIDTHS[:-1], WIDTHS[1:])]
        self.model = nn.Sequential(*[x for layer in layers for x in (layer, nn.Tanh())][:-1])
        self.layers = layers
        g = torch.Generator().manual_seed(1000 + seed)
        self.c = [torch.randn(layer.in_features, layer.out_features, generator=g) for layer in layers]
        grads = []
        for c in self.c:  # ∂f/∂W = Cᵀ (out × in), ∂f/∂b = Σ_rows C
            grads += [c.T.flatten(), c.sum(0)]
        self.g = torch.cat(grads)

    def fitness(self, model: nn.Module) -> torch.Tensor:
        k = current_population().size
        total = torch.zeros(k)
        for layer, c in zip(self.layers, self.c):
            eye = torch.eye(layer.in_features).expand(k, -1, -1)  # shared input, no copy
            total += (layer(eye) * c).sum(dim=(1, 2))  # (k,)
        return total

    def estimate_cosine(self, population: int, rank: int, seed: int, table_size: int | None = None) -> float:
        """cos(ĝ, g) of one generation (SGD, lr = 1: the step is the estimate)."""
        before = torch.cat([p.detach().flatten().clone() for p in self.model.parameters()])
        trainer = EGGROLLTrainer(
            self.model.parameters(), model=self.model, fitness_fn=self.fitness, population_size=population,
            learning_rate=1.0, sigma=0.01, rank=rank, seed=seed, batched=True, chunk_size=CHUNK,
            noise_table_size=table_size,
        )  # fmt: skip
        trainer.step()
        after = torch.cat([p.detach().flatten().clone() for p in self.model.parameters()])
        with torch.no_grad():  # back to θ for the next measurement
            torch.nn.utils.vector_to_parameters(before, self.model.parameters())
        return cosine_similarity(after - before, self.g, dim=0).item()

    def fresh_cosine(self, population: int, rank: int | None, seed: int) -> float:
        """The same antithetic estimate Σ_k ⟨g, E_k⟩ E_k (what z-scored antithetic pairs reduce to for a
        linear f) with factors from fresh ``torch.randn`` — the infinite-table baseline. ``rank=None``:
        full-rank i.i.d. Gaussian noise for every parameter."""
        gen = torch.Generator().manual_seed(seed)
        pairs = num_pairs(population, True)
        parts = []
        for p in self.model.parameters():
            if p.dim() == 2 and rank is not None:
                m, n = p.shape
                a = torch.randn(pairs, m, rank, generator=gen)
                b = torch.randn(pairs, n, rank, generator=gen)
                parts.append((a @ b.transpose(1, 2) / math.sqrt(rank)).reshape(pairs, -1))
            else:
                parts.append(torch.randn(pairs, p.numel(), generator=gen))
        e = torch.cat(parts, dim=1)  # (P, D)
        estimate = (e @ self.g) @ e
        return cosine_similarity(estimate, self.g, dim=0).item()


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ---------------------------------------------------------------------------- 1. table size sweep
def member_correlation(
    table: torch.Tensor, shape: tuple[int, int], pairs: int, sample: int
) -> tuple[float, float, int]:
    """Mean and max |corr| between the rank-1 perturbations of ``sample`` consecutive pairs of one
    parameter (neighbours share the most values when windows overlap), and the window stride."""
    noise = ParamNoise(table, NoiseSpec(torch.Size(shape), rank=1), hash_key(0, 1, 0), pairs)
    a_t, b_t = noise.factors_t(0, sample)  # (S, 1, m), (S, 1, n)
    e = (a_t.transpose(1, 2) @ b_t).reshape(sample, -1)
    e = e / e.norm(dim=1, keepdim=True)
    corr = (e @ e.T).abs()
    off = corr[~torch.eye(sample, dtype=torch.bool)]
    return off.mean().item(), off.max().item(), noise.stride


def fresh_correlation(shape: tuple[int, int], sample: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(sample, shape[0], 1, generator=g), torch.randn(sample, shape[1], 1, generator=g)
    e = (a @ b.transpose(1, 2)).reshape(sample, -1)
    e = e / e.norm(dim=1, keepdim=True)
    off = (e @ e.T).abs()[~torch.eye(sample, dtype=torch.bool)]
    return off.mean().item(), off.max().item()


def table_sweep(args: Args, problem: LinearProblem) -> list[dict]:
    population, rank = 16384, 1
    pairs = num_pairs(population, True)
    lengths = [NoiseSpec(p.shape, rank if p.dim() == 2 else None).length for p in problem.model.parameters()]
    smallest = max(lengths) + pairs - 1
    default = default_table_size(lengths, pairs)
    sizes = [s for s in (2**14, 2**16, 2**18, 2**19, 2**20, 2**22) if s >= smallest]
    if args.quick:
        sizes = [sizes[0], sizes[2], default]
    sizes = sorted(set(sizes) | {default})
    shape, sample = (32, 32), 512
    rows = []
    seeds = range(args.seeds)
    for size in sizes:
        table = noise_table(0, size, torch.device("cpu"), torch.float32)
        corr_mean, corr_max, stride = member_correlation(table, shape, pairs, sample)
        cos = mean_std([problem.estimate_cosine(population, rank, s, table_size=size) for s in seeds])
        row = dict(
            table_values=size, table_MB=size * 4 / 1e6, default=size == default, stride_32x32=stride,
            overlap_32x32=max(0.0, 1 - stride / lengths[2]), cos_mean=cos[0], cos_std=cos[1],
            corr_mean=corr_mean, corr_max=corr_max,
        )  # fmt: skip
        rows.append(row)
        print(
            f"  table 2^{int(math.log2(size)):2d} ({size * 4 / 1e6:6.2f} MB){' default' if row['default'] else '        '}: "
            f"stride {stride:4d} of {lengths[2]} values (overlap {row['overlap_32x32']:4.0%}), "
            f"cos(ĝ, g) {cos[0]:.3f} ± {cos[1]:.3f}, member |corr| mean {corr_mean:.4f} max {corr_max:.3f}",
            flush=True,
        )
    fresh_cos = mean_std([problem.fresh_cosine(population, rank, 100 + s) for s in seeds])
    fresh_corr = fresh_correlation(shape, sample)
    rows.append(dict(
        table_values="fresh randn", table_MB="", default=False, stride_32x32="", overlap_32x32=0.0,
        cos_mean=fresh_cos[0], cos_std=fresh_cos[1], corr_mean=fresh_corr[0], corr_max=fresh_corr[1],
    ))  # fmt: skip
    print(
        f"  fresh torch.randn factors      : cos(ĝ, g) {fresh_cos[0]:.3f} ± {fresh_cos[1]:.3f}, "
        f"member |corr| mean {fresh_corr[0]:.4f} max {fresh_corr[1]:.3f}",
        flush=True,
    )
    return rows


# -------------------------------------------------------------------- 2. build cost vs fresh noise
def build_costs(args: Args) -> tuple[list[dict], list[dict]]:
    reps = 3 if args.quick else 7
    build = []
    for log2 in (20, 22, 24, 25):
        size = 1 << log2
        seconds = median_time(
            partial(noise_table.__wrapped__, 0, size, torch.device("cpu"), torch.float32), reps
        )
        build.append(dict(table_values=size, table_MB=size * 4 / 1e6, build_ms=seconds * 1e3))
        print(f"  build 2^{log2} values ({size * 4 / 1e6:6.1f} MB): {seconds * 1e3:7.1f} ms", flush=True)
    fresh = []
    workloads = (("64-256-256-8", (64, 256, 256, 8), 1024), ("64-1024-1024-8", (64, 1024, 1024, 8), 256))
    for name, widths, population in workloads:
        for rank in (1, 4, 16):
            pairs = num_pairs(population, True)
            per_pair = sum((n + m) * rank + m for n, m in zip(widths[:-1], widths[1:]))  # A, B and β
            count = pairs * per_pair
            seconds = median_time(partial(torch.randn, count), reps * 3)
            default = default_table_size(
                [(n + m) * rank for n, m in zip(widths[:-1], widths[1:])] + list(widths[1:]), pairs
            )
            views = median_time(partial(_table_views, default, widths, rank, pairs), reps * 3)
            fresh.append(dict(
                model=name, N=population, rank=rank, normals_per_generation=count, randn_ms=seconds * 1e3,
                table_views_ms=views * 1e3, default_table_values=default,
            ))  # fmt: skip
            print(
                f"  {name} N={population} r={rank:2d}: {count / 1e6:5.2f} M normals per generation: "
                f"fresh torch.randn {seconds * 1e3:6.2f} ms, table views {views * 1e3:6.3f} ms",
                flush=True,
            )
    return build, fresh


def _table_views(size: int, widths: tuple[int, ...], rank: int, pairs: int) -> None:
    """What a generation pays for its noise with the table: one view per factor (cached table)."""
    table = noise_table(0, size, torch.device("cpu"), torch.float32)
    for j, (n, m) in enumerate(zip(widths[:-1], widths[1:])):
        ParamNoise(table, NoiseSpec(torch.Size((m, n)), rank), hash_key(0, 2 * j, 0), pairs).factors_t(
            0, pairs
        )
        ParamNoise(table, NoiseSpec(torch.Size((m,)), None), hash_key(0, 2 * j + 1, 0), pairs).full(0, pairs)


# ----------------------------------------------------------------------------- 3. N and r grid
def grid(args: Args, problem: LinearProblem) -> list[dict]:
    d = problem.g.numel()
    rows = []
    for population in (64, 256, 1024):
        pairs = num_pairs(population, True)
        reference = 1 / math.sqrt(1 + (d + 1) / pairs)
        for rank in (1, 4, 16):
            cos = mean_std([problem.estimate_cosine(population, rank, s) for s in range(args.seeds)])
            rows.append(
                dict(N=population, rank=rank, cos_mean=cos[0], cos_std=cos[1], iid_reference=reference)
            )
            print(
                f"  N={population:5d} r={rank:2d}: cos(ĝ, g) {cos[0]:.3f} ± {cos[1]:.3f} "
                f"(i.i.d. full-rank reference {reference:.3f})",
                flush=True,
            )
    return rows


# ------------------------------------------------------------------------------------------ output
def write_results(args: Args, sweep, build, fresh, grid_rows, header: str, elapsed: float) -> Path:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "noise_table" + ("_quick" if args.quick else "")
    write_csv(args.out_dir / f"{stem}_sizes.csv", sweep)
    write_csv(args.out_dir / f"{stem}_build.csv", build)
    write_csv(args.out_dir / f"{stem}_fresh.csv", fresh)
    write_csv(args.out_dir / f"{stem}_grid.csv", grid_rows)
    cmd = "python benchmarks/noise_table.py" + (" --quick" if args.quick else "")
    # Headless Markdown (bold captions, tables): docs/benchmarks.md includes this file verbatim.
    lines = [
        f"`{cmd}` ({elapsed / 60:.1f} min, {args.seeds} seeds per configuration) on {header}.",
        "",
        f"**Table size vs estimate quality** (MLP {'-'.join(map(str, WIDTHS))}, N = 16384, r = 1): cos(ĝ, g) "
        "for a fitness linear in θ (mean ± std over seeds); stride and overlap of consecutive pairs' windows "
        "for the 32×32 weight (64 values per member); |corr| between the rank-1 perturbations of 512 "
        "consecutive pairs.",
        "",
        "| table (values) | MB | stride | overlap | cos(ĝ, g) | mean \\|corr\\| | max \\|corr\\| |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sweep:
        if r["table_values"] == "fresh randn":
            label, mb, stride = "fresh `torch.randn`", "—", "—"
        else:
            label = f"2^{int(math.log2(r['table_values']))}" + (" (default)" if r["default"] else "")
            mb, stride = f"{r['table_MB']:.2f}", str(r["stride_32x32"])
        lines.append(
            f"| {label} | {mb} | {stride} | {r['overlap_32x32']:.0%} | {r['cos_mean']:.3f} ± {r['cos_std']:.3f} | "
            f"{r['corr_mean']:.4f} | {r['corr_max']:.3f} |"
        )
    lines += [
        "",
        "**Building the table** (once per seed) **vs drawing fresh Gaussians every generation:**",
        "",
        "| table (values) | MB | build (ms, once per seed) |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| 2^{int(math.log2(b['table_values']))} | {b['table_MB']:.0f} | {b['build_ms']:.0f} |"
        for b in build
    ]
    lines += [
        "",
        "| model | N | r | normals per generation | fresh `torch.randn` (ms) | table views (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {f['model']} | {f['N']} | {f['rank']} | {f['normals_per_generation'] / 1e6:.2f} M | "
        f"{f['randn_ms']:.2f} | {f['table_views_ms']:.3f} |"
        for f in fresh
    ]
    lines += [
        "",
        f"**cos(ĝ, g) vs N and r** (default table, MLP {'-'.join(map(str, WIDTHS))}, D = 1732):",
        "",
        "| N | r | cos(ĝ, g) | i.i.d. full-rank reference 1/√(1 + (D+1)/P) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {g['N']} | {g['rank']} | {g['cos_mean']:.3f} ± {g['cos_std']:.3f} | {g['iid_reference']:.3f} |"
        for g in grid_rows
    ]
    path = args.out_dir / f"{stem}.md"
    write_markdown(path, lines)
    return path


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    header = machine()
    print(header, flush=True)
    problem = LinearProblem()
    print("1. table size vs quality (N=16384, r=1):", flush=True)
    sweep = table_sweep(args, problem)
    print("2. table build vs fresh Gaussians:", flush=True)
    build, fresh = build_costs(args)
    print("3. cos(ĝ, g) vs N and r (default table):", flush=True)
    grid_rows = grid(args, problem)
    path = write_results(args, sweep, build, fresh, grid_rows, header, time.perf_counter() - start)
    print(f"wrote {path} and CSVs")


if __name__ == "__main__":
    main()
