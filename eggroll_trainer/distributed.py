"""Sharding the population over ``torch.distributed`` ranks (the OpenAI-ES scheme).

Every rank holds the same θ and the same noise table; rank q evaluates members
``q·N/R .. (q+1)·N/R - 1``; only the N fitness scalars cross the network (one all-gather); every rank then
applies the identical update from regenerated noise. Active whenever the default process group is
initialised with world size R > 1 (e.g. under ``torchrun``).

A rank whose fitness raises still joins the all-gather, flagging its failure, so every rank raises
instead of waiting forever; a rank that dies outright is caught by the process group's timeout.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(population_size: int) -> tuple[int, int]:
    """(first member, member count) this rank evaluates."""
    rank, size = world()
    if population_size % size != 0:
        raise ValueError(
            f"population_size={population_size} must be divisible by the world size {size}"
        )
    count = population_size // size
    return rank * count, count


class RemoteFitnessError(RuntimeError):
    """Another rank's fitness evaluation failed during this generation."""


def gather_scores(local: Tensor | None, population_size: int) -> Tensor:
    """All-gather every rank's scores into the (N,) population vector (float64, CPU).

    ``local=None`` means this rank failed: the others raise :class:`RemoteFitnessError`."""
    rank, size = world()
    if size == 1:
        assert local is not None
        return local
    count = population_size // size
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    # slot 0 = failure flag, then the scores
    mine = torch.zeros(count + 1, dtype=torch.float64, device=device)
    if local is None:
        mine[0] = 1.0
    else:
        mine[1:] = local.to(device=device, dtype=torch.float64)
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine)
    failed = [q for q, part in enumerate(parts) if part[0].item() != 0.0]
    if failed and local is not None:
        raise RemoteFitnessError(f"fitness evaluation failed on rank(s) {failed}; see their logs")
    return torch.cat([part[1:] for part in parts]).cpu()


def broadcast_seed(seed: int) -> int:
    """Rank 0's seed, so that ``seed=None`` (random) still gives every rank the same noise."""
    rank, size = world()
    if size == 1:
        return seed
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([seed], dtype=torch.int64, device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
