"""What a generation of the soft-prompt recipe costs: with the prefix cached once a member, and without.

SmolLM2-135M, the example's recipe (N = 32 members × P = 8 training prompts, a soft prompt of 8 tokens, rank 4,
5 new tokens): ``trainer.step()`` timed with ``SoftPromptLM(cache_prefix=True)`` (each member's prefix run
once, its KV cache repeated for the member's rows) and ``cache_prefix=False`` (``[prefix | prompt]`` decoded
for every row), alternating in one process, the median of ``--repeats`` steps each; the weights' recipe
(``--soft-prompt 0``: all 210 linear matrices, σ 5e-3) beside them. The learning rate is 0 so every step
sees the same model and the two soft-prompt paths can be checked to give the same completions.

Run:
    python benchmarks/llm_soft_prompt_step.py [--threads 1 --repeats 3]
Writes ``benchmarks/results/llm_soft_prompt_step.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, machine, markdown_table, write_csv, write_markdown

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.llm import PromptBaseline, RewardFitness, SoftPromptLM, load_causal_lm, select_targets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import llm_finetune as task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm("smollm2")
    train, _ = task.make_task(512)
    prompts = [task.prompt(a, b) for a, b in random.Random(0).sample(train, args.prompts)]
    host = machine()

    def trainer_for(name: str) -> tuple[EGGROLLTrainer, RewardFitness]:
        fitness = RewardFitness(tok, task.reward, 5)
        fitness.prompts = prompts
        if name == "weights":
            params, target, sigma = select_targets(model, "all-linear").params, model, 5e-3
        else:
            target = SoftPromptLM(model, 8, seed=0, cache_prefix=name == "soft prompt, prefix cached")
            params, sigma = [target.prompt], 0.1
        trainer = EGGROLLTrainer(
            params, target, fitness, population_size=args.population, learning_rate=0.0, sigma=sigma, rank=4,
            freeze_nonlora=True, fitness_shaping=PromptBaseline(), batched=True, track_best=False, seed=0,
        )  # fmt: skip
        return trainer, fitness

    names = ["soft prompt, prefix cached", "soft prompt, whole sequence", "weights"]
    runs = {name: trainer_for(name) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    completions: dict[str, list] = {}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name in names:
            trainer, fitness = runs[name]
            start = time.perf_counter()
            trainer.step()
            times[name].append(time.perf_counter() - start)
            completions[name] = fitness.last_completions
    same = completions[names[0]] == completions[names[1]]
    rows = []
    rows_per_step = args.population * args.prompts
    for name in names:
        seconds = statistics.median(times[name][1:])
        rows.append(dict(recipe=name, s_per_generation=round(seconds, 2),
                         rows_per_s=round(rows_per_step / seconds, 1)))  # fmt: skip
        print(f"{name}: {seconds:.2f} s a generation ({rows_per_step / seconds:.0f} rows/s)")
    base = rows[1]["s_per_generation"]
    write_csv(RESULTS / "llm_soft_prompt_step.csv", rows)
    write_markdown(
        RESULTS / "llm_soft_prompt_step.md",
        [
            f"**One generation of SmolLM2-135M, N = {args.population} × P = {args.prompts} rows, 5 new tokens, "
            f"{args.threads} thread(s), median of {args.repeats}** ({host})",
            "",
            *markdown_table(
                ["recipe", "s a generation", "rows/s", "against the whole sequence"],
                [
                    (
                        r["recipe"],
                        f"{r['s_per_generation']:.2f}",
                        f"{r['rows_per_s']:.0f}",
                        f"{base / r['s_per_generation']:.2f}×",
                    )
                    for r in rows
                ],  # fmt: skip
            ),
            "",
            f"The two soft-prompt paths gave {'the same' if same else 'DIFFERENT'} completions for every member "
            "(lr 0: every step sees the same model).",
            "",
            f"`python benchmarks/llm_soft_prompt_step.py --threads {args.threads} --repeats {args.repeats}`",
        ],
    )


if __name__ == "__main__":
    main()
