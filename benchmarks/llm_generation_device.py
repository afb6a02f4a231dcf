"""Language-model generation on an accelerator: population ``generate`` vs plain ``generate`` of the same rows.

Random-init Llamas built from ``LlamaConfig`` (nothing is downloaded): SmolLM2-135M's shape (``smollm2-135m``)
and Llama-3.2-1B's (``llama-1b``, 1.2 B parameters), in bf16. K members × P prompts = K·P rows, member-major
(1024 by default: 128 members × 8 prompts of 16 tokens), greedy, exactly ``--new-tokens`` new tokens
(``min_new_tokens``), KV cache; all-linear targets, rank 1, ``freeze_nonlora`` (DESIGN §8).

* tokens/s: the population ``generate`` (the fitness function's own call inside ``trainer.step()``) against
  plain ``generate`` of the same K·P rows by the unperturbed model; the ratio is the median of per-repetition
  ratios (goal, issue 27: ≥ 0.8); the whole step (generate + shaping + the update of every target) too;
* per decoding step: the milliseconds of each (prefill included, divided by the new tokens); their difference
  is what population mode costs a step — its Python dispatch of every op on a perturbed weight plus the rank-1
  terms, which are tiny on a GPU;
* ``--compile``: the same with ``model.forward`` compiled by ``torch.compile`` (plain and population mode,
  each reported, or the error it raised);
* device memory one plain ``generate`` and one ``trainer.step()`` add at their peak.

Run:
    python benchmarks/llm_generation_device.py --device cuda --config smollm2-135m
    python benchmarks/llm_generation_device.py --device cuda --config llama-1b [--compile]
    python benchmarks/llm_generation_device.py --device cpu --smoke        # tiny sizes: the script runs
Writes ``benchmarks/results/llm_generation_<config>_<device>_<dtype>.md`` and ``.csv`` (a smoke run writes only
where ``--out-dir`` says).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from common import (
    RESULTS,
    device_peak_mib,
    device_tag,
    markdown_table,
    on_device,
    synced,
    write_csv,
    write_markdown,
)

from eggroll_trainer import EGGROLLTrainer, current_population
from eggroll_trainer.llm.models import select_targets

SIGMA, LR, SEED, PROMPT_TOKENS, GOAL = 1e-3, 1e-4, 0, 16, 0.8

CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096),
    "smoke": dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128),
}  # fmt: skip


def build(name: str, device: torch.device, dtype: torch.dtype) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(**CONFIGS[name], tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                                      pad_token_id=0)  # fmt: skip
    torch.manual_seed(SEED)
    with torch.device(device):  # initialised where it runs: seconds, not minutes, for 1 B parameters
        model = transformers.LlamaForCausalLM(config)
    return model.to(dtype).eval()


class Generation:
    """The K·P rows and the fitness: each member's mean new token id (any per-member number will do)."""

    def __init__(self, model: Any, members: int, prompts: int, new_tokens: int, device: torch.device) -> None:
        g = torch.Generator().manual_seed(SEED)
        vocab = model.config.vocab_size
        self.prompts = torch.randint(3, vocab, (prompts, PROMPT_TOKENS), generator=g).to(device)  # (P, T)
        self.model, self.members, self.new_tokens, self.device = model, members, new_tokens, device
        self.seconds: list[float] = []

    def generate(self, k: int) -> torch.Tensor:
        ids = self.prompts.repeat(k, 1)  # (K·P, T), member-major
        out = self.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.new_tokens,
            min_new_tokens=self.new_tokens, do_sample=False, pad_token_id=0,
        )  # fmt: skip
        return out[:, PROMPT_TOKENS:]  # (K·P, new)

    def fitness(self, model: Any) -> torch.Tensor:
        k = current_population().size
        t0 = time.perf_counter()
        new = synced(lambda: self.generate(k), self.device)()
        self.seconds.append(time.perf_counter() - t0)
        return new.float().view(k, -1).mean(dim=1)  # (K,)

    @torch.no_grad()
    def plain(self) -> None:
        synced(lambda: self.generate(self.members), self.device)()


def measure(gen: Generation, trainer: EGGROLLTrainer, reps: int, label: str) -> dict[str, Any]:
    gen.plain()
    trainer.step()  # warm-up (and, compiled, the compilation)
    plain_s, pop_s, step_s = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        gen.plain()
        plain_s.append(time.perf_counter() - t0)
        gen.seconds.clear()
        t0 = time.perf_counter()
        trainer.step()
        step_s.append(time.perf_counter() - t0)
        pop_s.append(gen.seconds[0])
    tokens, n = gen.members * gen.prompts.shape[0] * gen.new_tokens, gen.new_tokens
    return dict(
        mode=label, plain_tokens_per_s=tokens / statistics.median(plain_s),
        population_tokens_per_s=tokens / statistics.median(pop_s),
        population_over_plain=statistics.median(p / q for p, q in zip(plain_s, pop_s)),
        step_over_plain=statistics.median(p / q for p, q in zip(plain_s, step_s)),
        plain_ms_per_step=statistics.median(plain_s) / n * 1e3, population_ms_per_step=statistics.median(pop_s) / n * 1e3,
        extra_ms_per_step=(statistics.median(pop_s) - statistics.median(plain_s)) / n * 1e3,
        step_s=statistics.median(step_s),
    )  # fmt: skip


def run(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> tuple[list[dict], dict[str, Any]]:
    model = build(args.config, device, dtype)
    targets = select_targets(model, "all-linear")
    gen = Generation(model, args.members, args.prompts, args.new_tokens, device)
    trainer = EGGROLLTrainer(targets.params, model, gen.fitness, population_size=args.members, learning_rate=LR,
                             sigma=SIGMA, rank=1, freeze_nonlora=True, batched=True, seed=SEED,
                             track_best=False)  # fmt: skip
    info = dict(params=sum(p.numel() for p in model.parameters()), targets=targets.numel,
                plain_peak_mib=device_peak_mib(gen.plain, device), step_peak_mib=device_peak_mib(trainer.step, device))  # fmt: skip
    rows = [measure(gen, trainer, args.reps, "eager")]
    print(rows[-1], flush=True)
    if args.compile:
        model.forward = torch.compile(model.forward)
        try:
            rows.append(measure(gen, trainer, args.reps, "torch.compile"))
        except Exception as error:  # reported, not hidden: population mode may not trace
            rows.append(dict(mode="torch.compile", error=f"{type(error).__name__}: {str(error)[:300]}"))
        print(rows[-1], flush=True)
    return rows, info


def write(rows: list[dict], info: dict, args: argparse.Namespace, caption: str, out: Path, tag: str) -> Path:
    stem = f"llm_generation_{args.config}_{tag}"
    write_csv(out / f"{stem}.csv", [info | r for r in rows])
    command = (f"python benchmarks/llm_generation_device.py --device {args.device} --config {args.config} "
               f"--members {args.members} --prompts {args.prompts} --new-tokens {args.new_tokens} --reps {args.reps}"
               + (" --compile" if args.compile else ""))  # fmt: skip
    mib = lambda v: "—" if v is None else f"{v:.0f}"  # noqa: E731
    rows_k = args.members * args.prompts
    lines = [
        f"**Population generation vs plain generate on {caption.split(' (')[0]}** ({args.config}, random init, "
        f"{info['params'] / 1e6:.0f} M parameters, {info['targets'] / 1e6:.0f} M in the all-linear targets; "
        f"{args.members} members × {args.prompts} prompts = {rows_k} rows, {PROMPT_TOKENS} prompt tokens, "
        f"{args.new_tokens} new tokens, greedy, rank 1). `{command}` on {caption}.",
        "",
    ]
    lines += markdown_table(
        ["mode", "plain tok/s", "population tok/s", "population / plain", "whole step / plain",
         "plain ms / step", "population ms / step", "extra ms / step"],
        [(r["mode"], f"{r['plain_tokens_per_s']:.0f}", f"{r['population_tokens_per_s']:.0f}",
          f"{r['population_over_plain']:.2f}", f"{r['step_over_plain']:.2f}", f"{r['plain_ms_per_step']:.1f}",
          f"{r['population_ms_per_step']:.1f}", f"{r['extra_ms_per_step']:.1f}") if "error" not in r
         else (r["mode"], "failed: " + r["error"].replace("|", "/"), "", "", "", "", "", "") for r in rows],
    )  # fmt: skip
    lines += ["", f"Goal (issue 27): population / plain ≥ {GOAL}. Device memory added at the peak: plain generate "
              f"{mib(info['plain_peak_mib'])} MiB, trainer.step() {mib(info['step_peak_mib'])} MiB."]  # fmt: skip
    path = out / f"{stem}.md"
    write_markdown(path, lines)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--config", choices=sorted(CONFIGS), default="smollm2-135m")
    p.add_argument("--members", type=int, default=128, help="K (default 128)")
    p.add_argument("--prompts", type=int, default=8, help="P prompts per member (default 8: K·P = 1024 rows)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time with torch.compile(model.forward)")
    p.add_argument(
        "--smoke", action="store_true", help="tiny model and sizes, one repetition, no result file"
    )
    p.add_argument("--out-dir", type=Path, default=None, help=f"where results go (default {RESULTS})")
    args = p.parse_args()
    if args.smoke:
        args.config, args.members, args.prompts, args.new_tokens, args.reps = "smoke", 4, 2, 4, 1
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    caption = on_device(device, transformers=transformers.__version__)
    print(caption, flush=True)
    rows, info = run(args, device, dtype)
    out = args.out_dir if args.out_dir is not None else (None if args.smoke else RESULTS)
    if out is None:
        print("smoke run: no result file written (give --out-dir to keep one)")
        return
    print(f"wrote {write(rows, info, args, caption, out, device_tag(device, dtype))}")


if __name__ == "__main__":
    main()
