"""The population product's CPU variants against the reference: what each switch of the rule buys.

For a few layer shapes (member-major rows and a shared block; one row per member as an MLP population, and 32
rows per member as tokens of a sequence) this times, interleaved:

* the reference product (``product_reference``: shared GEMM, then a batched rank-r term, then the bias noise);
* the variant ``choose_variant`` picks on this machine;
* that variant with each of its switches turned off, one at a time.

It prints reference / chosen (> 1: the variant is faster) and, per switch, (chosen without it) / chosen (> 1:
the switch pays). Times are the steady state of a call's later forwards (members' noise and biases built).

Run:
    python benchmarks/product_variants.py            # ~1 min on 2 cores
    python benchmarks/product_variants.py --reps 30
Writes ``benchmarks/results/product_variants.md`` (``--out-dir`` elsewhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch
from common import RESULTS, interleaved, machine, markdown_table, median_ratio, write_markdown

from eggroll_trainer.population.cache import MemberBiases, ProductNoise
from eggroll_trainer.population.product_reference import reference_product
from eggroll_trainer.population.product_variants import REFERENCE, choose_variant, variant_product

SIGMA = 0.01


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    members: int  # K (mirrored pairs: G = K/2 groups of S = 2)
    rows: int  # per member
    width: int  # in = out
    rank: int
    shared: bool = False


SHAPES = (
    Shape("MLP row, width 256", 1024, 1, 256, 1),
    Shape("MLP row, width 1024", 256, 1, 1024, 1),
    Shape("MLP row, width 1024, r=4", 256, 1, 1024, 4),
    Shape("32 tokens, width 512", 32, 32, 512, 1),
    Shape("32 tokens, width 512, r=4", 32, 32, 512, 4),
    Shape("shared row, width 256", 1024, 1, 256, 1, shared=True),
    Shape("shared 32 tokens, width 512, r=4", 32, 32, 512, 4, shared=True),
)


def inputs(shape: Shape) -> tuple:
    """x, W, b, the noise layout and the shared output rows of one product (mirrored pairs, bias noise)."""
    g = torch.Generator().manual_seed(0)
    k, n, r = shape.members, shape.width, shape.rank
    groups = k // 2
    noise = ProductNoise(
        groups=groups, mirrors=2, a_t=torch.randn(groups, r, n, generator=g),
        b=torch.randn(groups, r, n, generator=g).transpose(1, 2), alpha=SIGMA / math.sqrt(r),
        beta=torch.randn(groups, 1, n, generator=g), sigma_b=SIGMA,
    )  # fmt: skip
    x = torch.randn(shape.rows if shape.shared else k * shape.rows, n, generator=g)
    weight, bias = torch.randn(n, n, generator=g) / math.sqrt(n), torch.randn(n, generator=g)
    return x, weight, bias, noise, (k * shape.rows if shape.shared else None)


def measure(shape: Shape, reps: int) -> dict:
    x, weight, bias, noise, shared_rows = inputs(shape)
    chosen = choose_variant(noise, cpu=x.is_cpu, shared=shape.shared, rows=shape.rows)
    on = [f.name for f in dataclasses.fields(chosen) if getattr(chosen, f.name)]
    variants = {"chosen": chosen} | {f"without {s}": dataclasses.replace(chosen, **{s: False}) for s in on}

    def run(variant):
        biases = MemberBiases()
        return lambda: variant_product(variant, x, weight, bias, noise, False, shared_rows, biases)

    fns = {"reference": lambda: reference_product(x, weight, bias, noise, False, shared_rows)}
    fns |= {name: run(v) for name, v in variants.items()}
    t = interleaved(fns, reps, calls=5, warmup=3)  # warm-up: later forwards of a call
    assert chosen != REFERENCE
    return {
        "shape": shape,
        "reference_ms": 1e3 * sorted(t["reference"])[reps // 2],
        "chosen_ms": 1e3 * sorted(t["chosen"])[reps // 2],
        "speedup": median_ratio(t["reference"], t["chosen"]),
        "switches": {s: median_ratio(t[f"without {s}"], t["chosen"]) for s in on},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    caption = machine()
    print(caption, flush=True)
    rows = []
    for shape in SHAPES:
        m = measure(shape, args.reps)
        switches = ", ".join(f"{s} {v:.2f}" for s, v in m["switches"].items())
        print(f"{shape.name:34s} K={shape.members:5d} | reference {m['reference_ms']:7.3f} ms | chosen "
              f"{m['chosen_ms']:7.3f} ms | ×{m['speedup']:.2f} | without each switch: {switches}", flush=True)  # fmt: skip
        rows.append((shape.name, shape.members, f"{m['reference_ms']:.3f}", f"{m['chosen_ms']:.3f}",
                     f"{m['speedup']:.2f}", switches))  # fmt: skip
    header = ("layer", "K", "reference ms", "chosen ms", "reference / chosen", "(without switch) / chosen")
    lines = [
        f"Product variants vs the reference, median of {args.reps} interleaved repetitions. {caption}",
        "",
    ]
    write_markdown(args.out_dir / "product_variants.md", lines + markdown_table(header, rows, "lrrrrl"))


if __name__ == "__main__":
    main()
