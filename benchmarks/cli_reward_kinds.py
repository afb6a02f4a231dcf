"""Every ``--reward`` kind of ``eggroll tune`` on the real SmolLM2-135M, a few generations each.

Runs the commands the CLI page shows (``docs/guide/cli.md``) with a small budget and writes
``results/cli_reward_kinds.md``: each command, its final console line, and its reward per generation (and the
held-out reward where evaluated). These are smoke runs that show what each kind prints, not training results.

    python benchmarks/cli_reward_kinds.py [--generations 4] [--population 8]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import transformers
from common import RESULTS, machine, markdown_table, write_markdown

ROOT = Path(__file__).resolve().parent.parent
R = "examples/rewards"
KINDS = {
    "batch reward with fields": ["--reward", f"{R}/reward.py", "--eval-prompts", f"{R}/arithmetic_heldout.jsonl",
                                 "--eval-every", "2"],
    "score(text)": ["--reward", f"{R}/score.py"],
    "lambda": ["--reward", "lambda text: 1.0 if text.strip()[:1].isdigit() else 0.0"],
    "reward_fn(model, inputs)": ["--reward", f"{R}/reward_fn.py"],
    "perplexity (ES-SFT)": ["--reward", "perplexity", "--reference-field", "answer"],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--population", type=int, default=8)
    args = parser.parse_args()
    common = ["--prompts", f"{R}/arithmetic.jsonl", "--generations", str(args.generations), "--population",
              str(args.population), "--prompts-per-step", "4", "--max-new-tokens", "6", "--sigma", "1e-3", "--lr",
              "3e-7", "--adapter-rank", "0", "--threads", "2", "--quiet"]  # fmt: skip
    lines = [f"**`eggroll tune` reward kinds** — {machine(transformers=transformers.__version__)}", ""]
    for kind, flags in KINDS.items():
        with tempfile.TemporaryDirectory() as out:
            argv = ["tune", "smollm2", *flags, *common, "--output", out]
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "eggroll_trainer.llm.cli", *argv], cwd=ROOT,
                                  capture_output=True, text=True)  # fmt: skip
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
            records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        shown = ["eggroll " + shlex.join(argv).replace(out, "runs/x")]
        lines += [f"**{kind}** ({wall:.0f} s with loading)", "", "```console", "$ " + shown[0],
                  done.stdout.strip().splitlines()[-1].replace(out, "runs/x"), "```", ""]  # fmt: skip
        header = ["generation", "mean reward", "best member", "held-out (greedy)"]
        rows = [(r["generation"], f"{r['mean_reward']:.4f}", f"{r['best_reward']:.4f}",
                 f"{r['eval_reward']:.4f}" if "eval_reward" in r else "") for r in records]  # fmt: skip
        lines += markdown_table(header, rows) + [""]
        print(kind, "done", f"{wall:.0f} s", flush=True)
    write_markdown(RESULTS / "cli_reward_kinds.md", lines)


if __name__ == "__main__":
    main()
