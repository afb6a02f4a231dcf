"""Population generation vs plain ``generate`` of the same rows: throughput and peak memory (SmolLM2-135M).

One EGGROLL generation of an LM fine-tune is one ``model.generate`` over K·P rows (K members × P prompts,
member-major, KV cache, greedy) in population mode: every decoding step is one forward of all members,
each adding only rank-r terms to the shared GEMMs. The baseline is the unperturbed model generating the
very same K·P rows with plain ``generate``. Both decode exactly ``--new-tokens`` tokens
(``min_new_tokens``), so they do the same number of forwards.

* throughput: tokens/s over all K·P rows; the ratio population/plain (goal ≥ 0.8) is the median of
  per-repetition ratios, plain and population timed back to back in each repetition (shared machine);
  the whole ``trainer.step()`` (generation + shaping + the update of every perturbed matrix) is shown too;
* memory: peak RSS added by one plain generate and by one ``trainer.step()``, each in a fresh process,
  next to what a per-member copy of the perturbed weights would take (K × their size).

Run:
    python benchmarks/llm_generation.py            # K·P ∈ {8·8, 32·8}, 5 repetitions (~5 min on 2 cores)
    python benchmarks/llm_generation.py --quick    # 32·8 only, 3 repetitions
Writes ``benchmarks/results/llm_generation{_quick}.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, machine, markdown_table, peak_rss_bytes, rss, write_csv, write_markdown

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.llm.fitness import RewardFitness
from eggroll_trainer.llm.models import load_causal_lm, select_targets

SIGMA, SEED = 5e-3, 0


def prompts(count: int) -> list[str]:
    rng = random.Random(SEED)
    return [f"{rng.randint(10, 99)} + {rng.randint(10, 99)} =" for _ in range(count)]


def length_reward(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(len(c)) for c in completions]


def setup(model_spec: str, members: int, n_prompts: int, new_tokens: int) -> tuple[Any, ...]:
    model, tok = load_causal_lm(model_spec)
    targets = select_targets(model, "all-linear")
    fitness = RewardFitness(tok, length_reward, new_tokens, min_new_tokens=new_tokens)
    fitness.prompts = prompts(n_prompts)
    trainer = EGGROLLTrainer(
        targets.params, model, fitness, population_size=members, learning_rate=0.0, sigma=SIGMA, rank=1,
        freeze_nonlora=True, batched=True, seed=SEED,
    )  # fmt: skip
    rows = tok(fitness.prompts * members, return_tensors="pt", padding=True)  # the same K·P rows, plain

    def plain() -> None:
        with torch.no_grad():
            model.generate(
                **rows, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip

    return model, targets, fitness, trainer, plain


def time_config(model_spec: str, members: int, n_prompts: int, new_tokens: int, reps: int) -> dict[str, Any]:
    model, targets, fitness, trainer, plain = setup(model_spec, members, n_prompts, new_tokens)
    plain()
    trainer.step()  # warm-up
    plain_s, gen_s, step_s = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        plain()
        plain_s.append(time.perf_counter() - t0)
        before = fitness.seconds
        t0 = time.perf_counter()
        trainer.step()
        step_s.append(time.perf_counter() - t0)
        gen_s.append(fitness.seconds - before)
    tokens = members * n_prompts * new_tokens
    return dict(
        members=members, prompts=n_prompts, rows=members * n_prompts, new_tokens=new_tokens,
        plain_tokens_per_s=tokens / statistics.median(plain_s),
        population_tokens_per_s=tokens / statistics.median(gen_s),
        throughput_ratio=statistics.median(p / g for p, g in zip(plain_s, gen_s)),
        step_ratio=statistics.median(p / s for p, s in zip(plain_s, step_s)),
        plain_s=statistics.median(plain_s), population_generate_s=statistics.median(gen_s),
        step_s=statistics.median(step_s), perturbed_mb=targets.numel * 4 / 2**20,
    )  # fmt: skip


def memory_child(spec: dict[str, Any]) -> None:
    """One measurement in a fresh process: peak RSS added by one plain generate or one trainer step."""
    torch.set_num_threads(spec["threads"])
    _, _, _, trainer, plain = setup(spec["model"], spec["members"], spec["prompts"], spec["new_tokens"])
    resident = rss()["VmRSS"]
    added = peak_rss_bytes(plain if spec["kind"] == "plain" else trainer.step)
    print(json.dumps({"added": added, "resident_before": resident}))


def measure_memory(args: argparse.Namespace, members: int, n_prompts: int, kind: str) -> dict[str, int]:
    spec = dict(model=args.model, members=members, prompts=n_prompts, new_tokens=args.new_tokens, kind=kind,
                threads=torch.get_num_threads())  # fmt: skip
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", json.dumps(spec)], capture_output=True, text=True, env=env,
        check=True,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one configuration, 3 repetitions")
    p.add_argument("--model", default="smollm2", help="model to load (default: the packaged SmolLM2-135M)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens decoded per row (default: 8)")
    p.add_argument("--reps", type=int, default=0, help="repetitions (default 5, quick 3)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory measurements")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return
    torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 5)
    configs = [(32, 8)] if args.quick else [(8, 8), (32, 8)]
    caption = machine()
    rows = []
    for members, n_prompts in configs:
        row = time_config(args.model, members, n_prompts, args.new_tokens, reps)
        if args.memory:
            plain_mem = measure_memory(args, members, n_prompts, "plain")
            pop_mem = measure_memory(args, members, n_prompts, "population")
            row.update(
                resident_mb=pop_mem["resident_before"] / 2**20, plain_peak_added_mb=plain_mem["added"] / 2**20,
                step_peak_added_mb=pop_mem["added"] / 2**20, per_member_copies_mb=members * row["perturbed_mb"],
            )  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    suffix = "_quick" if args.quick else ""
    write_csv(args.out_dir / f"llm_generation{suffix}.csv", rows)
    fmt = lambda v: f"{v:.0f}"
    lines = [f"**Population generation vs plain generate** ({args.model}, {args.new_tokens} new tokens a row, "
             f"greedy, all-linear targets, r = 1; {caption})", ""]  # fmt: skip
    lines += markdown_table(
        ["K × P = rows", "plain tok/s", "population tok/s", "population / plain", "whole step / plain"],
        [(f"{r['members']} × {r['prompts']} = {r['rows']}", fmt(r["plain_tokens_per_s"]),
          fmt(r["population_tokens_per_s"]), f"{r['throughput_ratio']:.2f}", f"{r['step_ratio']:.2f}")
         for r in rows],
    )  # fmt: skip
    if args.memory:
        lines += ["", "**Peak memory** (RSS added at the peak, fresh process each; MiB)", ""]
        lines += markdown_table(
            ["K × P", "resident (model + trainer)", "plain generate", "trainer.step()", "K per-member copies"],
            [(f"{r['members']} × {r['prompts']}", fmt(r["resident_mb"]), fmt(r["plain_peak_added_mb"]),
              fmt(r["step_peak_added_mb"]), fmt(r["per_member_copies_mb"])) for r in rows],
        )  # fmt: skip
    write_markdown(args.out_dir / f"llm_generation{suffix}.md", lines)


if __name__ == "__main__":
    main()
