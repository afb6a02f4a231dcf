"""Batched population evaluation: forward, whole generation, rank and memory, vs eggroll-trainer 0.1.0.

The figures of issues 3 and 13, one input row per member, MLPs 64-256-256-8 at N=1024 and 64-1024-1024-8 at N=256
(tanh between layers), ``EGGROLLTrainer`` with antithetic pairs and plain SGD:

* (a) the population forward (population mode) vs plain inference of the same N rows through the
  unperturbed model — ratio plain/population, goals ≥ 0.8 (width 256) and ≥ 0.9 (width 1024);
* (b) a whole generation (``trainer.step()``: noise, forward, shaping, update) vs plain inference —
  goals ≤ 3× (width 256) and ≤ 2.2× (width 1024) (issue 13; issue 3 asked ≥ 0.5 / ≤ 5× and ≤ 2.5×);
* (c) generation time vs eggroll-trainer 0.1.0, installed at run time into a throwaway directory and
  imported under another name (never vendored) — goal ≥ 50× faster;
* (d) the same for rank 1, 4, 16 and for the sequential path (``batched=False``);
* (e) peak memory of a generation vs N, one subprocess per configuration (peak RSS; see ``memory_child``).

Timings are interleaved: each repetition times plain inference and then the candidate, and a ratio is the
median of the per-repetition ratios, so load from other processes on a shared machine hits both sides alike;
repetitions go round-robin over all configurations, so a burst of load spoils one repetition of each, not
every repetition of one.
Both packages are given the same fitness function, which scores one row per call in the sequential form
and runs under ``torch.no_grad()`` (0.1.0 does not disable autograd itself; this is its best case).

Run:
    python benchmarks/population_forward.py              # full run (~2 min on 2 cores)
    python benchmarks/population_forward.py --threads 1  # the same on one thread
    python benchmarks/population_forward.py --quick      # ~1 min
    python benchmarks/population_forward.py --device cuda --dtype bfloat16   # on a GPU: population_device.py
    python benchmarks/population_forward.py --device cpu --smoke             # the device path, tiny sizes
Writes ``benchmarks/results/population_forward{_quick}{_t<threads>}.md`` (timings, included by
docs/benchmarks.md), ``…_memory.md`` and the CSVs.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType

import population_device
import torch
from common import (
    RESULTS,
    Case,
    machine,
    median_ratio,
    peak_rss_bytes,
    round_robin,
    timed_repeats,
    write_csv,
    write_markdown,
)
from torch import nn

import eggroll_trainer
from eggroll_trainer import EGGROLLTrainer, current_population
from eggroll_trainer.noise.table import noise_table

SIGMA, LR, SEED = 0.01, 0.01, 0


@dataclass(frozen=True)
class Workload:
    name: str
    widths: tuple[int, ...]
    population: int
    forward_goal: float  # plain / population forward, at least
    generation_goal: float  # generation / plain, at most


WORKLOADS = (  # the goals of issue 13 (issue 3's were ≥ 0.5 / ≤ 5× and ≥ 0.9 / ≤ 2.5×)
    Workload("64-256-256-8", (64, 256, 256, 8), 1024, forward_goal=0.8, generation_goal=3.0),
    Workload("64-1024-1024-8", (64, 1024, 1024, 8), 256, forward_goal=0.9, generation_goal=2.2),
)
OLD_SPEEDUP_GOAL = 50.0


@dataclass
class Args:
    quick: bool = False
    threads: int = 0  # 0: torch's default
    reps: int = 0  # 0: 15 (quick: 5)
    old_version: str = "0.1.0"  # "" skips the comparison
    memory: bool = True
    out_dir: Path = RESULTS


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions and configurations")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--reps", type=int, default=0, help="timing repetitions (default 15, quick 5)")
    p.add_argument("--old-version", default="0.1.0", help="earlier eggroll-trainer to compare ('' skips)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory sweep")
    p.add_argument("--out-dir", type=Path, default=None, help=f"where results go (default {RESULTS})")
    p.add_argument("--device", help="run the accelerator benchmark (population_device.py) on this device")
    p.add_argument("--dtype", default="float32", help="with --device: parameter dtype (bfloat16, float32)")
    p.add_argument("--smoke", action="store_true", help="with --device: tiny sizes, to check the script runs")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)  # internal: one memory measurement
    ns = p.parse_args()
    if ns.memory_child:
        memory_child(json.loads(ns.memory_child))
        sys.exit(0)
    if ns.device:
        if ns.threads:
            torch.set_num_threads(ns.threads)
        population_device.main(ns)
        sys.exit(0)
    return Args(ns.quick, ns.threads, ns.reps, ns.old_version, ns.memory, ns.out_dir or RESULTS)


# ------------------------------------------------------------------------------------------ workload
def make_mlp(widths: tuple[int, ...]) -> nn.Sequential:
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    for i, (n, m) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(n, m)] + ([nn.Tanh()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


class Fitness:
    """−MSE of every member's output row against a fixed target; records the time of each model call.

    ``batched``: population mode, member i sees row i; with ``repeats`` > 0 it runs that many more
    forwards and times all but the first of them in ``steady_s`` (``common.timed_repeats``: the steady
    per-call cost). ``one_row``: one member per call (sequential
    evaluation, and eggroll-trainer 0.1.0), rows taken in member order — the same rows, the same model."""

    def __init__(self, widths: tuple[int, ...], population: int, repeats: int = 0) -> None:
        g = torch.Generator().manual_seed(SEED + 1)
        self.x = torch.randn(population, widths[0], generator=g)  # (N, 64): one row per member
        self.y = torch.randn(population, widths[-1], generator=g)  # (N, 8)
        self.row = 0
        self.repeats = repeats
        self.forward_s: list[float] = []
        self.steady_s: list[float] = []

    def batched(self, model: nn.Module) -> torch.Tensor:
        info = current_population()
        x, y = self.x[info.start : info.start + info.size], self.y[info.start : info.start + info.size]
        t0 = time.perf_counter()
        out = model(x)
        self.forward_s.append(time.perf_counter() - t0)
        timed_repeats(lambda: model(x), self.repeats, self.steady_s)
        return -((out - y) ** 2).mean(-1)  # (N,)

    @torch.no_grad()
    def one_row(self, model: nn.Module) -> float:
        i = self.row
        self.row = (i + 1) % self.x.shape[0]
        t0 = time.perf_counter()
        out = model(self.x[i : i + 1])
        self.forward_s.append(time.perf_counter() - t0)
        return -float(((out - self.y[i : i + 1]) ** 2).mean())


# ------------------------------------------------------------------------------------------- timing
def plain_inference(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


# ------------------------------------------------------------------------------ eggroll-trainer 0.1.0
def load_old_package(version: str) -> ModuleType:
    """pip-install ``eggroll-trainer==version`` into a temporary directory and import it under its own
    name without touching ours: our modules are set aside in ``sys.modules`` during the import and put back.

    Its metadata asks for Python ≥ 3.12, but its code runs on 3.10+, hence ``--ignore-requires-python``."""
    target = tempfile.mkdtemp(prefix="eggroll-trainer-old-")
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--target", target, "--python-version", "3.12", "--only-binary=:all:", "--ignore-requires-python",
        f"eggroll-trainer=={version}",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    name = "eggroll_trainer"
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == name or k.startswith(name + ".")}
    sys.path.insert(0, target)
    try:
        old = importlib.import_module(name)
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[k]
    finally:
        sys.path.remove(target)
        sys.modules.update(ours)
    if not old.__file__.startswith(target) or old.__version__ != version:
        raise RuntimeError(
            f"imported {old.__file__} (version {old.__version__}), not {version} from {target}"
        )
    if sys.modules[name] is not eggroll_trainer:
        raise RuntimeError("our eggroll_trainer was replaced in sys.modules")
    return old


# ------------------------------------------------------------------------------------------- memory
def memory_child(cfg: dict) -> None:
    """One configuration in a fresh process (large blocks mmapped, so freed memory leaves RSS)."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    widths, n, rank = tuple(cfg["widths"]), cfg["population"], cfg["rank"]
    model = make_mlp(widths)
    fit = Fitness(widths, n)
    trainer = EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=fit.batched, population_size=n, learning_rate=LR,
        sigma=SIGMA, rank=rank, seed=SEED, batched=True, chunk_size=cfg["chunk"],
    )  # fmt: skip
    plain = plain_inference(model, fit.x)
    plain()
    trainer.step()  # warm-up: builds the noise table, first-call caches
    result = {
        "plain": peak_rss_bytes(plain),
        "generation": peak_rss_bytes(trainer.step),
        "table": noise_table(SEED, trainer.noise_table_size, torch.device("cpu"), torch.float32).numel() * 4,
    }
    print(json.dumps(result))


def measure_memory(args: Args) -> list[dict]:
    narrow, wide = WORKLOADS
    pops = (256, 1024, 4096) if args.quick else (256, 1024, 4096, 16384)
    configs = [(narrow, n, r, None) for r in (1, 16) for n in pops] + [(narrow, pops[-1], 16, 1024)]
    configs += [(wide, n, r, None) for r in (1, 16) for n in pops[:-1]]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    for w, n, r, chunk in configs:
        cfg = dict(widths=w.widths, population=n, rank=r, chunk=chunk, threads=args.threads)
        cmd = [sys.executable, __file__, "--memory-child", json.dumps(cfg)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        res = json.loads(out.strip().splitlines()[-1])
        theta = sum(p.numel() for p in make_mlp(w.widths).parameters())
        factors = n * r * sum(a + b for a, b in zip(w.widths[:-1], w.widths[1:]))  # N·r·Σ(m+n), floats
        rows.append(dict(
            model=w.name, N=n, rank=r, chunk=chunk or "", params=theta,
            theta_MB=theta * 4 / 1e6, factors_MB=factors * 4 / 1e6, table_MB=res["table"] / 1e6,
            plain_peak_MB=res["plain"] / 1e6, generation_peak_MB=res["generation"] / 1e6,
        ))  # fmt: skip
        print(
            f"  {w.name:>15} N={n:6d} r={r:2d} chunk={chunk or '-':>5}: generation peak "
            f"{res['generation'] / 1e6:7.1f} MB (plain inference {res['plain'] / 1e6:6.1f} MB; "
            f"|θ| {theta * 4 / 1e6:.1f} MB, N·r·Σ(m+n) {factors * 4 / 1e6:6.1f} MB, "
            f"table {res['table'] / 1e6:.0f} MB, allocated once)",
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------------------------- main
@dataclass
class Row:
    model: str
    N: int
    path: str
    rank: int
    plain_ms: float
    forward_ms: float
    generation_ms: float
    plain_over_forward: float
    generation_over_plain: float
    first_forward_ms: float | None = None  # batched: the generation's own (first) forward
    plain_over_first: float | None = None
    old_generation_ms: float | None = None
    old_over_plain: float | None = None
    speedup_vs_old: float | None = None
    notes: list[str] = field(default_factory=list)


def bench_all(args: Args, old: ModuleType | None) -> list[Row]:
    """(a)-(d): batched ranks 1, 4, 16 and the sequential path of both workloads, then 0.1.0."""
    reps = args.reps or (5 if args.quick else 15)
    cases, meta = [], []
    for w in WORKLOADS:
        for path, rank in [("batched", 1), ("batched", 4), ("batched", 16), ("sequential", 1)]:
            batched = path == "batched"
            first: list[float] = []  # seconds in the model per generation (batched: its one forward)
            steady: list[float] = []  # batched: mean of the repeated forwards, per generation
            trainer, fit, plain = _setup(w, rank, batched)
            generation = partial(_generation, trainer, fit, first)
            cases.append(Case(f"{w.name} {path} r={rank}", plain, generation, calls=3 if batched else 1,
                              every=1 if batched else 5))  # fmt: skip
            forward_case = None
            if batched:  # a second trainer whose fitness repeats the forward: (a)
                trainer, fit, plain = _setup(w, rank, batched, repeats=4)
                forward_case = Case(
                    f"{w.name} forward r={rank}", plain, partial(_steady, trainer, fit, steady), 1
                )
                cases.append(forward_case)
            meta.append((w, path, rank, first, steady, forward_case))
    print(f"timing {len(cases)} configurations, {reps} round-robin repetitions ...", flush=True)
    round_robin(cases, reps)
    rows = []
    gen_cases = [c for c in cases if " forward " not in c.name]
    for case, (w, path, rank, first, steady, forward_case) in zip(gen_cases, meta):
        # first[0] is from the warm-up generation; then `calls` generations per timed repetition
        first = [
            statistics.mean(first[1 + i * case.calls : 1 + (i + 1) * case.calls])
            for i in range(len(case.fn_s))
        ]
        row = Row(
            model=w.name, N=w.population, path=path, rank=rank, plain_ms=statistics.median(case.plain_s) * 1e3,
            forward_ms=statistics.median(first) * 1e3, plain_over_forward=median_ratio(case.plain_s, first),
            generation_ms=statistics.median(case.fn_s) * 1e3,
            generation_over_plain=median_ratio(case.fn_s, case.plain_s),
        )  # fmt: skip
        if forward_case is not None:
            row.first_forward_ms, row.plain_over_first = row.forward_ms, row.plain_over_forward
            row.forward_ms = statistics.median(steady[1:]) * 1e3
            row.plain_over_forward = median_ratio(forward_case.plain_s, steady[1:])
        else:
            row.notes.append(f"sequential forward = {w.population} one-row forwards")
        rows.append(row)
    if old is not None:
        bench_old(rows, old, args)
    for row in rows:
        print(format_row(row), flush=True)
    return rows


def _setup(
    w: Workload, rank: int, batched: bool, repeats: int = 0
) -> tuple[EGGROLLTrainer, Fitness, Callable]:
    model = make_mlp(w.widths)
    fit = Fitness(w.widths, w.population, repeats)
    trainer = EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=fit.batched if batched else fit.one_row,
        population_size=w.population, learning_rate=LR, sigma=SIGMA, rank=rank, seed=SEED, batched=batched,
    )  # fmt: skip
    return trainer, fit, plain_inference(model, fit.x)


def _generation(trainer: EGGROLLTrainer, fit: Fitness, first: list[float]) -> None:
    fit.forward_s.clear()
    trainer.step()
    first.append(sum(fit.forward_s))


def _steady(trainer: EGGROLLTrainer, fit: Fitness, steady: list[float]) -> None:
    fit.steady_s.clear()
    trainer.step()
    steady.append(statistics.mean(fit.steady_s))


def bench_old(rows: list[Row], old: ModuleType, args: Args) -> None:
    """0.1.0's generation at full N, its ratio to plain inference, and our speed-up over it (the ratio of the
    two ratios, each taken against plain inference timed in the same repetition). Rank 1 only with --quick."""
    ranks = (1,) if args.quick else (1, 4, 16)
    reps = 1 if args.quick else 5  # 0.1.0's generation time varies ~2× from one generation to the next
    cases = []
    for w in WORKLOADS:
        for rank in ranks:
            model = make_mlp(w.widths)
            fit = Fitness(w.widths, w.population)
            # noise_reuse=2 is 0.1.0's antithetic sampling
            trainer = old.EGGROLLTrainer(
                model.parameters(), model=model, fitness_fn=fit.one_row, population_size=w.population,
                learning_rate=LR, sigma=SIGMA, rank=rank, noise_reuse=2, seed=SEED,
            )  # fmt: skip
            cases.append(
                Case(f"0.1.0 {w.name} r={rank}", plain_inference(model, fit.x), trainer.step, calls=1)
            )
    print(f"timing eggroll-trainer 0.1.0: {len(cases)} configurations, {reps} repetition(s) ...", flush=True)
    round_robin(cases, reps)
    by_key = {(c.name.split()[1], int(c.name.split("r=")[1])): c for c in cases}
    for row in rows:
        case = by_key.get((row.model, row.rank))
        if case is None:
            continue
        row.old_generation_ms = statistics.median(case.fn_s) * 1e3
        row.old_over_plain = median_ratio(case.fn_s, case.plain_s)
        row.speedup_vs_old = row.old_over_plain / row.generation_over_plain
        row.notes.append(f"0.1.0: {reps} generation(s) per configuration at full N, after 1 warm-up")


def format_row(r: Row) -> str:
    old = ""
    if r.speedup_vs_old is not None:
        old = f" | 0.1.0 {r.old_generation_ms:8.1f} ms = {r.old_over_plain:5.0f}× plain → ours {r.speedup_vs_old:5.0f}× faster"
    first = "" if r.plain_over_first is None else f", in step {r.plain_over_first:4.2f}"
    return (
        f"{r.model:>15} N={r.N:4d} {r.path:>10} r={r.rank:2d} | plain {r.plain_ms:6.2f} ms | forward "
        f"{r.forward_ms:7.2f} ms (plain/forward {r.plain_over_forward:4.2f}{first}) | generation "
        f"{r.generation_ms:8.2f} ms (= {r.generation_over_plain:6.2f}× plain){old}"
    )


def write_results(args: Args, rows: list[Row], memory: list[dict], header: str, elapsed: float) -> Path:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "population_forward" + ("_quick" if args.quick else "")
    cmd = "python benchmarks/population_forward.py" + (" --quick" if args.quick else "")
    if args.threads:
        cmd += f" --threads {args.threads}"
        stem += f"_t{args.threads}"
    write_csv(args.out_dir / f"{stem}.csv", [asdict(r) | {"notes": "; ".join(r.notes)} for r in rows])
    if memory:
        write_csv(args.out_dir / f"{stem}_memory.csv", memory)

    def num(x: float | None, fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    # Headless Markdown (a bold caption, tables): docs/benchmarks.md includes these files verbatim.
    goals = {w.name: w for w in WORKLOADS}
    caption = f"`{cmd}` ({elapsed / 60:.1f} min) on {header}."
    lines = [
        f"**Population forward and whole generations.** {caption}",
        "",
        "One input row per member; ratios are medians of per-repetition ratios (plain inference timed in the "
        "same repetition). *forward*: one population-mode forward, repeated as plain inference is (the "
        "per-call cost: the third to fifth forwards of a call; the second builds the members' biases they "
        "reuse); *in step*: the generation's own forward, which also builds the layers' noise views "
        "and starts with caches cooled by the previous update (its time is part of *generation*). Goals "
        "(issue 13): plain/forward ≥ 0.8 (width 256) and ≥ 0.9 (width 1024); generation ≤ 3× (width 256) and "
        f"≤ 2.2× (width 1024) plain inference; (issue 3) ≥ {OLD_SPEEDUP_GOAL:.0f}× faster than 0.1.0 per "
        "generation.",
        "",
        "| model | N | path | r | plain (ms) | forward (ms) | plain / forward | plain / forward in step "
        "| generation (ms) | generation / plain | 0.1.0 generation (ms) | 0.1.0 / plain | ours vs 0.1.0 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.N} | {r.path} | {r.rank} | {r.plain_ms:.2f} | {r.forward_ms:.2f} | "
            f"{r.plain_over_forward:.2f} | {num(r.plain_over_first, '.2f')} | "
            f"{r.generation_ms:.2f} | {r.generation_over_plain:.2f}× | "
            f"{num(r.old_generation_ms, '.0f')} | {num(r.old_over_plain, '.0f')}"
            f"{'×' if r.old_over_plain else ''} | {num(r.speedup_vs_old, '.0f')}{'×' if r.speedup_vs_old else ''} |"
        )
    lines += ["", "Goals at rank 1, batched:", ""]
    for r in rows:
        if r.path == "batched" and r.rank == 1:
            g = goals[r.model]
            checks = [
                f"plain/forward {r.plain_over_forward:.2f} (goal ≥ {g.forward_goal}) "
                f"{'met' if r.plain_over_forward >= g.forward_goal else 'MISSED'}",
                f"generation {r.generation_over_plain:.2f}× plain (goal ≤ {g.generation_goal}×) "
                f"{'met' if r.generation_over_plain <= g.generation_goal else 'MISSED'}",
            ]
            if r.speedup_vs_old is not None:
                checks.append(
                    f"{r.speedup_vs_old:.0f}× faster than 0.1.0 (goal ≥ {OLD_SPEEDUP_GOAL:.0f}×) "
                    f"{'met' if r.speedup_vs_old >= OLD_SPEEDUP_GOAL else 'MISSED'}"
                )
            lines.append(f"* {r.model}, N={r.N}: " + "; ".join(checks))
    notes = sorted({n for r in rows for n in r.notes})
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    path = args.out_dir / f"{stem}.md"
    write_markdown(path, lines)
    if memory:
        lines = [
            f"**Peak memory of a generation.** {caption} Peak RSS added by one `trainer.step()` (batched, "
            "after a warm-up step), one subprocess per row; the shared noise table is allocated once per seed "
            "and listed separately.",
            "",
            "| model | N | r | chunk | generation peak (MB) | plain inference peak (MB) | \\|θ\\| (MB) "
            "| N·r·Σ(m+n) (MB) | noise table (MB) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in memory:
            lines.append(
                f"| {m['model']} | {m['N']} | {m['rank']} | {m['chunk'] or '—'} | {m['generation_peak_MB']:.1f} | "
                f"{m['plain_peak_MB']:.1f} | {m['theta_MB']:.1f} | {m['factors_MB']:.1f} | {m['table_MB']:.0f} |"
            )
        write_markdown(args.out_dir / f"{stem}_memory.md", lines)
    return path


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    header = machine()
    print(header, flush=True)
    old = None
    if args.old_version:
        print(f"installing eggroll-trainer=={args.old_version} into a temporary directory ...", flush=True)
        old = load_old_package(args.old_version)
    rows = bench_all(args, old)
    memory = []
    if args.memory:
        print("peak memory of a generation (subprocess per configuration):", flush=True)
        memory = measure_memory(args)
    path = write_results(args, rows, memory, header, time.perf_counter() - start)
    print(f"wrote {path}, its _memory.md and the CSVs")


if __name__ == "__main__":
    main()
