"""Population mode on real architectures: a whole generation against plain inference of the same rows.

For a transformer LM (``Embedding`` + learned positions → ``nn.TransformerEncoder`` → ``Linear``), a CNN
(``Conv2d → Conv2d → Linear``), Hugging Face GPT-2 and Llama (small configs, random init): K = 64 members,
rank 1, one sequence (32 tokens) or one image per member, so the batch holds 64 rows, member-major.

* plain forward: ``model(x)`` on the same 64 rows, unperturbed, under ``torch.no_grad()``; population
  forward: the fitness function's own forward inside ``trainer.step()`` (population mode);
* plain inference: the plain forward scored the same way (the loss), i.e. evaluating the unperturbed
  model on the task; generation: the whole ``trainer.step()`` (population forward and scores, shaping,
  update, best-member bookkeeping);
* peak extra memory of a generation (peak RSS added by one step, one subprocess per model).

Each repetition times plain inference and then a generation, and a ratio is the median of the
per-repetition ratios, so load from other processes hits both sides alike. Goals (issue 10): generation
≤ 2.5× plain inference for all four; population forward ≥ 0.8 of plain for the transformer LM.

Run:
    python benchmarks/architectures.py            # 1 and 2 threads (~3 min on 2 cores)
    python benchmarks/architectures.py --reps 5   # quicker
    python benchmarks/architectures.py --device cuda --dtype bfloat16   # on a GPU (every call synchronised)
    python benchmarks/architectures.py --device cpu --smoke             # one repetition: the script runs
Writes ``benchmarks/results/architectures.md`` (included by docs/benchmarks.md) and ``architectures.csv``; with
``--device cuda``, ``architectures_<device>_<dtype>.md``/``.csv`` (device memory is not measured there); a smoke
run writes only where ``--out-dir`` says.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from common import (
    RESULTS,
    device_tag,
    interleaved,
    machine,
    on_device,
    peak_rss_bytes,
    synced,
    timed_repeats,
    write_csv,
    write_markdown,
)
from torch import nn

from eggroll_trainer import EGGROLLTrainer, current_population

K, SEQ, VOCAB, WIDTH = 64, 32, 1000, 128
GENERATION_GOAL, FORWARD_GOAL = 2.5, 0.8


class TransformerLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Parameter(torch.randn(SEQ, WIDTH) * 0.02)  # used directly by the forward
        layer = nn.TransformerEncoderLayer(WIDTH, 4, 4 * WIDTH, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.head(self.encoder(self.embed(tokens) + self.pos))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.head = nn.Linear(64 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, 10)
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=WIDTH, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def llama() -> nn.Module:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=SEQ)  # fmt: skip
    return transformers.LlamaForCausalLM(config)


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "transformer LM": TransformerLM, "CNN": CNN, "GPT-2 (HF)": gpt2, "Llama (HF)": llama,
}  # fmt: skip


class Task:
    """One input per member, different for every member; the score is minus the model's loss."""

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype) -> None:
        g = torch.Generator().manual_seed(0)
        self.name = name
        self.device = device
        self.image = name == "CNN"
        if self.image:
            self.x = torch.randn(K, 3, 32, 32, generator=g).to(device=device, dtype=dtype)
            self.y = torch.randint(0, 10, (K,), generator=g).to(device)
        else:
            self.x = torch.randint(0, VOCAB, (K, SEQ), generator=g).to(device)
        self.forward_s: list[float] = []
        self.steady_s: list[float] = []
        self.repeats = 0

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=x) if "HF" in self.name else model(x)
        return out.logits if hasattr(out, "logits") else out

    def loss(self, logits: torch.Tensor) -> torch.Tensor:  # (K,)
        if self.image:
            return nn.functional.cross_entropy(logits, self.y, reduction="none")
        ce = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), self.x[:, 1:], reduction="none")
        return ce.mean(dim=1)

    def fitness(self, model: nn.Module) -> torch.Tensor:
        assert current_population().size == K
        t0 = time.perf_counter()
        logits = synced(lambda: self.logits(model, self.x), self.device)()
        self.forward_s.append(time.perf_counter() - t0)
        timed_repeats(synced(lambda: self.logits(model, self.x), self.device), self.repeats, self.steady_s)
        return -self.loss(logits)

    def plain_forward(self, model: nn.Module) -> None:
        with torch.no_grad():
            synced(lambda: self.logits(model, self.x), self.device)()

    def plain(self, model: nn.Module) -> None:
        """Plain inference of the same rows, scored the same way: the unperturbed model's evaluation."""
        with torch.no_grad():
            synced(lambda: self.loss(self.logits(model, self.x)), self.device)()


CPU = torch.device("cpu")


def setup(
    name: str, device: torch.device = CPU, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Task, EGGROLLTrainer]:
    torch.manual_seed(0)
    model = ARCHITECTURES[name]().eval().to(device=device, dtype=dtype)
    task = Task(name, device, dtype)
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=task.fitness, population_size=K,
                             learning_rate=1e-3, sigma=1e-2, rank=1, seed=0, batched=True, optimizer="adam")  # fmt: skip
    return model, task, trainer


def bench(threads: int, reps: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    torch.set_num_threads(threads)
    cases = [setup(name, device, dtype) for name in ARCHITECTURES]
    fns = {}  # per repetition, per model: plain forward, plain inference + score, generation
    for (model, task, trainer), name in zip(cases, ARCHITECTURES):
        task.plain(model)  # warm-up: noise table, first-call caches
        trainer.step()
        task.forward_s.clear()
        fns[name, "forward"] = lambda model=model, task=task: task.plain_forward(model)
        fns[name, "plain"] = lambda model=model, task=task: task.plain(model)
        fns[name, "generation"] = synced(trainer.step, task.device)
    timed = interleaved(fns, reps, warmup=0)
    timings = {
        name: {key: timed[name, key] for key in ("forward", "plain", "generation")} for name in ARCHITECTURES
    }
    for name in ARCHITECTURES:
        timings[name]["forward_again"] = []  # plain forwards beside the steady population forwards, below
    for (model, task, trainer), name in zip(cases, ARCHITECTURES):  # steady-state population forwards
        task.repeats = 3  # the first repeat (the call's second forward) is not timed
        for _ in range(reps):
            t0 = time.perf_counter()
            task.plain_forward(model)
            timings[name]["forward_again"].append(time.perf_counter() - t0)
            trainer.step()
        task.repeats = 0
    rows = []
    for (model, task, _), name in zip(cases, ARCHITECTURES):
        t = timings[name]
        steady = [statistics.mean(task.steady_s[2 * i : 2 * i + 2]) for i in range(reps)]
        rows.append(dict(
            model=name, threads=threads, params=sum(p.numel() for p in model.parameters()),
            plain_forward_ms=statistics.median(t["forward"]) * 1e3,
            population_forward_ms=statistics.median(task.forward_s) * 1e3,
            steady_forward_ms=statistics.median(steady) * 1e3,
            plain_over_steady=statistics.median(p / f for p, f in zip(t["forward_again"], steady)),
            plain_ms=statistics.median(t["plain"]) * 1e3, generation_ms=statistics.median(t["generation"]) * 1e3,
            plain_over_forward=statistics.median(p / f for p, f in zip(t["forward"], task.forward_s)),
            generation_over_plain=statistics.median(g / p for g, p in zip(t["generation"], t["plain"])),
        ))  # fmt: skip
        r = rows[-1]
        print(f"{name:>15} t={threads} | forward: plain {r['plain_forward_ms']:7.2f} ms, population "
              f"{r['population_forward_ms']:7.2f} ms in step (plain/population {r['plain_over_forward']:.2f}), "
              f"{r['steady_forward_ms']:7.2f} ms steady ({r['plain_over_steady']:.2f}) | plain "
              f"inference + score {r['plain_ms']:7.2f} ms, generation {r['generation_ms']:7.2f} ms "
              f"(= {r['generation_over_plain']:.2f}× plain)", flush=True)  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------- memory
def memory_child(name: str) -> None:
    model, task, trainer = setup(name)
    task.plain(model)
    trainer.step()
    print(
        json.dumps(
            {"plain": peak_rss_bytes(lambda: task.plain(model)), "generation": peak_rss_bytes(trainer.step)}
        )
    )


def memory() -> dict[str, dict]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # large blocks mmapped: freed memory leaves RSS
    out = {}
    for name in ARCHITECTURES:
        cmd = [sys.executable, __file__, "--memory-child", name]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        out[name] = json.loads(result.strip().splitlines()[-1])
        print(f"{name:>15} peak extra memory: generation {out[name]['generation'] / 1e6:.1f} MB, "
              f"plain inference {out[name]['plain'] / 1e6:.1f} MB", flush=True)  # fmt: skip
    return out


def write(
    rows: list[dict], mem: dict[str, dict], header: str, elapsed: float, command: str, out: Path, stem: str
) -> Path:
    csv_rows = [
        {
            **r,
            "generation_peak_MB": mem.get(r["model"], {}).get("generation", 0) / 1e6,
            "plain_peak_MB": mem.get(r["model"], {}).get("plain", 0) / 1e6,
        }
        for r in rows
    ]
    write_csv(out / f"{stem}.csv", csv_rows)
    lines = [
        f"**Population mode on real architectures.** `{command}` ({elapsed / 60:.1f} min) on {header}.",
        "",
        f"K = {K} members, rank 1, one sequence of {SEQ} tokens (vocabulary {VOCAB}, width {WIDTH}, 2 layers) or one "
        "32×32 RGB image per member; ratios are medians of per-repetition ratios. *population forward in step*: "
        "the fitness function's first forward inside `trainer.step()` (it also builds the generation's noise "
        "views and per-member vectors, after the update has cooled the caches); *steady*: the third and fourth "
        "forwards in the same context (the second builds the per-member biases they reuse; what a fitness that calls the model repeatedly — generation, RL — pays per call); "
        "*plain inference + score*: the unperturbed model "
        "on the same rows, scored by the same loss; *generation*: the whole step. Goals (issue 10): "
        f"generation ≤ {GENERATION_GOAL}× plain inference; plain / population forward ≥ {FORWARD_GOAL} for the "
        "transformer LM.",
        "",
        "| model | params | threads | plain forward (ms) | population forward in step (ms) | plain / population "
        "in step | population forward steady (ms) | plain / population steady | plain inference + score (ms) "
        "| generation (ms) | generation / plain | peak extra memory of a generation (MB) | of plain inference (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = mem.get(r["model"])
        peak = "—" if m is None else f"{m['generation'] / 1e6:.1f}"
        plain_peak = "—" if m is None else f"{m['plain'] / 1e6:.1f}"
        ok = "met" if r["generation_over_plain"] <= GENERATION_GOAL else "MISSED"
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['threads']} | {r['plain_forward_ms']:.2f} "
            f"| {r['population_forward_ms']:.2f} | {r['plain_over_forward']:.2f} | {r['steady_forward_ms']:.2f} "
            f"| {r['plain_over_steady']:.2f} | {r['plain_ms']:.2f} "
            f"| {r['generation_ms']:.2f} | {r['generation_over_plain']:.2f}× ({ok}) "
            f"| {peak} | {plain_peak} |"
        )
    lines += [
        "",
        f"Memory: peak RSS added by one step after a warm-up, one subprocess per model, {torch.get_num_threads()} thread(s).",
    ]
    if not mem:
        lines[-1] = "Memory: not measured in this run."
    path = out / f"{stem}.md"
    write_markdown(path, lines)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--device", default="cpu", help="where the models run (cuda: every call synchronised)")
    p.add_argument("--dtype", default="float32", help="parameter dtype (float32, bfloat16)")
    p.add_argument("--smoke", action="store_true", help="one repetition, no memory, no result file")
    p.add_argument("--out-dir", type=Path, default=None, help=f"where results go (default {RESULTS})")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    on_cpu = device.type == "cpu" and dtype == torch.float32
    if args.smoke:
        args.reps, args.threads, args.memory = 1, [torch.get_num_threads()], False
    if not on_cpu:  # threads do not matter there; RSS is not device memory
        args.threads, args.memory = args.threads[-1:], False
    start = time.perf_counter()
    header = machine(transformers=transformers.__version__) if on_cpu else on_device(
        device, transformers=transformers.__version__)  # fmt: skip
    print(header, flush=True)
    rows = [row for threads in args.threads for row in bench(threads, args.reps, device, dtype)]
    mem = memory() if args.memory else {}
    out = args.out_dir if args.out_dir is not None else (None if args.smoke else RESULTS)
    if out is None:
        print("smoke run: no result file written (give --out-dir to keep one)")
        return
    command = f"python benchmarks/architectures.py --reps {args.reps}"
    command += "" if on_cpu else f" --device {args.device} --dtype {args.dtype}"
    stem = "architectures" if on_cpu else f"architectures_{device_tag(device, dtype)}"
    path = write(rows, mem, header, time.perf_counter() - start, command, out, stem)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
