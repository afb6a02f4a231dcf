"""What every benchmark script needs: a description of the machine, timing, peak memory, result files.

Scripts in ``benchmarks/`` run as ``python benchmarks/<name>.py``, so this file imports as ``common``:

    from common import RESULTS, machine, median_time, interleaved, median_ratio, peak_rss_bytes, write_csv

* ``machine(**versions)``: one line naming the CPU, logical CPUs, torch (and its threads), Python,
  eggroll-trainer, any other package versions given, and the load average now, for the caption of every
  result file: on a shared machine figures move with load.
* ``times(fn, reps)`` / ``median_time(fn, reps)``: seconds per call, after a warm-up call, for each of
  ``reps`` repetitions of ``calls`` back-to-back calls / their median.
* ``interleaved(fns, reps)``: the same for several functions, repetitions as the outer loop, so a burst of
  load from other processes spoils one repetition of each rather than every repetition of one;
  ``median_ratio(a, b)`` then compares two of them repetition by repetition.
* ``Case`` / ``round_robin(cases, reps)``: the same for pairs (plain inference, then a candidate), with
  per-case call counts and slow cases timed in every k-th repetition only.
* ``timed_repeats(fn, repeats, out)``: call ``fn`` again inside a fitness function and record the steady
  per-call time (the first repeat, which builds per-call caches, untimed).
* ``peak_rss_bytes(fn)``: resident memory added at the peak of ``fn`` (Linux: resets the high-water mark).
* ``write_csv(path, rows)``, ``markdown_table(header, rows)``, ``write_markdown(path, lines)``.
* On an accelerator: ``synced(fn, device)`` (a call that returns when the device is done, so wall-clock
  timing is right), ``on_device(device, **versions)`` (``machine()`` plus the device's name, for captions)
  ``device_tag(device, dtype)`` (for result file names) and ``device_peak_mib(fn, device)`` (device memory
  one call adds at its peak).
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import eggroll_trainer

RESULTS = Path(__file__).resolve().parent / "results"


def machine(**versions: str) -> str:
    """``"<CPU model>, <n> logical CPUs, torch <v> (<t> threads), Python <v>, eggroll-trainer <v>[, <name> <v>
    for each keyword]; load ..."``; ``machine(transformers=transformers.__version__)`` names one more package."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    more = "".join(f", {name} {version}" for name, version in versions.items())
    return (
        f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, eggroll-trainer {eggroll_trainer.__version__}{more}; "
        f"load average at start {load}"
    )


def on_device(device: torch.device, **versions: str) -> str:
    """``machine(**versions)``, then the accelerator that ran the figures (its name, memory, CUDA version)."""
    if device.type != "cuda":
        return machine(**versions) + f"; device {device.type}"
    props = torch.cuda.get_device_properties(device)
    return (
        f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}); host: "
        + machine(**versions)
    )


def device_tag(device: torch.device, dtype: torch.dtype) -> str:
    """``"NVIDIA_H200_bfloat16"``: the device's name and the dtype, for result file names."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return "_".join("".join(c if c.isalnum() else " " for c in name).split() + [str(dtype).split(".")[-1]])


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` followed by a wait for the device (CUDA runs asynchronously: without it a timer sees the launch)."""
    if device.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


# ------------------------------------------------------------------------------------------- timing
def times(fn: Callable[[], Any], reps: int, calls: int = 1, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` in each of ``reps`` repetitions of ``calls`` calls, after ``warmup`` calls."""
    return interleaved({"fn": fn}, reps, calls, warmup)["fn"]


def median_time(fn: Callable[[], Any], reps: int, calls: int = 1, warmup: int = 1) -> float:
    """The median over repetitions of ``times``: robust to the odd repetition slowed by other processes."""
    return statistics.median(times(fn, reps, calls, warmup))


def interleaved(
    fns: Mapping[Any, Callable[[], Any]], reps: int, calls: int | Mapping[Any, int] = 1, warmup: int = 1
) -> dict[Any, list[float]]:
    """Seconds per call of every function, one entry per repetition; repetitions are the outer loop.

    ``fns`` is keyed by any hashable name (a string, a ``(model, what)`` tuple); ``calls`` may differ per
    function (a mapping by name), e.g. more calls for a fast baseline."""
    per = {name: calls[name] if isinstance(calls, Mapping) else calls for name in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[Any, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(per[name]):
                fn()
            out[name].append((time.perf_counter() - t0) / per[name])
    return out


def median_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-repetition ratios num[i] / den[i] (both timed under the same load)."""
    return statistics.median(a / b for a, b in zip(num, den))


@dataclass
class Case:
    """One configuration to time against plain inference of the same rows: ``fn`` runs ``calls`` times per
    repetition (in every ``every``-th repetition only, for slow cases)."""

    name: str
    plain: Callable[[], Any]
    fn: Callable[[], Any]
    calls: int
    every: int = 1
    plain_s: list[float] = field(default_factory=list)
    fn_s: list[float] = field(default_factory=list)


def round_robin(cases: Sequence[Case], reps: int, plain_calls: int = 5) -> None:
    """Time every case in every repetition, plain inference first, then the case.

    Repetitions are the outer loop, so a burst of load from other processes hits one repetition of every
    case rather than every repetition of one case, and each ratio compares two timings taken under the
    same load. Fills ``plain_s`` and ``fn_s`` (seconds per call, one entry per timed repetition)."""
    for case in cases:  # warm-up
        case.plain()
        case.fn()
    for rep in range(reps):
        for case in cases:
            if rep % case.every:
                continue
            for fn, calls, out in ((case.plain, plain_calls, case.plain_s), (case.fn, case.calls, case.fn_s)):
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                out.append((time.perf_counter() - t0) / calls)


def timed_repeats(fn: Callable[[], Any], repeats: int, out: list[float]) -> None:
    """Call ``fn`` ``repeats`` times and append the seconds of every call but the first to ``out``.

    Inside a fitness function these are a population forward's steady per-call cost: the layers' noise
    views are in place after the generation's own forward, the first repeat (the call's second forward)
    builds the members' biases the later ones reuse, and the caches are as warm as for back-to-back plain
    inference — what a fitness that calls the model many times per generation (an RL rollout) pays."""
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        if i:
            out.append(time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- memory
def rss() -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak since the last reset) of this process, in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def peak_rss_bytes(fn: Callable[[], Any]) -> int:
    """Peak resident memory added while ``fn`` runs (Linux: reset the high-water mark, run, read it).

    Run it in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` so that large freed blocks leave RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = rss()["VmRSS"]
    fn()
    return rss()["VmHWM"] - base


def device_peak_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Device memory (MiB) one call of ``fn`` adds at its peak (``None`` off CUDA: see ``peak_rss_bytes``)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# ------------------------------------------------------------------------------------------ results
def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of dicts as a CSV file, columns in the order of the first row's keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """Lines of a Markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: first column
    left, the others right). Cells are written with ``str``: format numbers before."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def write_markdown(path: Path, lines: Sequence[str]) -> None:
    """Headless Markdown (bold captions, tables), as ``docs/benchmarks.md`` includes result files verbatim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
