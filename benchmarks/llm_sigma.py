"""σ calibration of SmolLM2-135M for the addition task of ``examples/llm_finetune.py``.

For each σ: the fraction of (member, prompt) rows whose greedy completion differs from the base model's, and
the mean |Δ log p| of the base model's answer (``eggroll_trainer.llm.calibration.calibrate_sigma``), with the
example's noise (rank 1, all 210 linear matrices; or, with ``--soft-prompt n``, the n virtual tokens of a
``SoftPromptLM`` started as the example starts it), on training prompts in the example's prompt format.

Run:
    python benchmarks/llm_sigma.py [--members 16 --prompts 16 --rank 1]
    python benchmarks/llm_sigma.py --soft-prompt 8 --sigmas 0.01 0.03 0.05 0.1 0.2 0.3
Writes ``benchmarks/results/llm_sigma_{template}[_sp{n}].md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, machine, markdown_table, write_csv, write_markdown

from eggroll_trainer.llm.calibration import calibrate_sigma
from eggroll_trainer.llm.models import load_causal_lm, select_targets
from eggroll_trainer.llm.soft_prompt import SoftPromptLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import llm_finetune as task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sigmas", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7e-3, 1e-2, 2e-2]
    )
    parser.add_argument("--template", default="plain", choices=sorted(task.TEMPLATES))
    parser.add_argument("--soft-prompt", type=int, default=0, help="n > 0: perturb a soft prompt of n tokens")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    model, tok = load_causal_lm("smollm2")
    train, _ = task.make_task(512)
    prompts = [task.prompt(a, b, args.template) for a, b in random.Random(1).sample(train, args.prompts)]
    host = machine(transformers=transformers.__version__)  # the load average as the run starts
    if args.soft_prompt:  # as the example starts it (seed 0): n random vocabulary embeddings
        model = SoftPromptLM(model, args.soft_prompt, seed=0)
        params, what = [model.prompt], f"a soft prompt of {args.soft_prompt} tokens"
    else:
        params, what = select_targets(model, "all-linear").params, "all 210 linear matrices"
    start = time.perf_counter()
    rows = calibrate_sigma(
        model,
        tok,
        prompts,
        args.sigmas,
        params=params,
        members=args.members,
        rank=args.rank,
        max_new_tokens=5,
    )  # the base answers are the model's own: with a soft prompt, behind its start
    seconds = time.perf_counter() - start
    for row in rows:
        print(
            f"sigma {row['sigma']:.0e}: {100 * row['differ']:5.1f} % of rows differ, |Δ log p| {row['mean_abs_dlogp']:.3f}"
        )
    name = f"llm_sigma_{args.template}" + (f"_sp{args.soft_prompt}" if args.soft_prompt else "")
    write_csv(RESULTS / f"{name}.csv", rows)
    write_markdown(
        RESULTS / f"{name}.md",
        [
            f"**σ calibration, SmolLM2-135M, addition ({args.template} prompt): {args.members} members × "
            f"{args.prompts} training prompts, rank {args.rank}, 5 new tokens, {what}** "
            f"({seconds:.0f} s; {host})",
            "",
            *markdown_table(
                ["σ", "rows whose greedy answer differs", "mean abs. Δ log p of the base answer (nats)"],
                [
                    (f"{r['sigma']:g}", f"{100 * r['differ']:.1f} %", f"{r['mean_abs_dlogp']:.3f}")
                    for r in rows
                ],
            ),
            "",
            f"`python benchmarks/llm_sigma.py --members {args.members} --prompts {args.prompts} --rank {args.rank} "
            f"--template {args.template}"
            + (
                f" --soft-prompt {args.soft_prompt} --sigmas {' '.join(f'{x:g}' for x in args.sigmas)}"
                if args.soft_prompt
                else ""
            )
            + "`",
        ],
    )


if __name__ == "__main__":
    main()
