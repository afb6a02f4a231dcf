"""Sharding the population over ``torch.distributed`` ranks (the OpenAI-ES scheme).

Every rank holds the same θ and the same noise table; rank q evaluates members
``q·N/R .. (q+1)·N/R - 1``; only the fitness scores cross the network — N scalars, or N·P for a fitness
that scores each member on P prompts (two all-gathers per generation: a small header that says each rank's
status and P, then the scores; plus one broadcast of the seed when a trainer is built); every rank then
applies the identical update from regenerated noise. Active whenever the default process group is initialised with
world size R > 1. Under ``torchrun`` the trainer initialises it itself if the script has not.

Failure behaviour:

* a rank whose evaluation raises still joins the generation's all-gather, flagging its failure, so it
  re-raises its own exception and every other rank raises :class:`RemoteFitnessError` — in the same
  generation, with θ unchanged everywhere;
* ranks that disagree on the run (seed or generation — a trainer built before the process group, a
  checkpoint loaded on some ranks only) raise :class:`RankMismatchError` instead of silently diverging;
* a rank that dies or hangs is caught by the process group itself: gloo notices a closed connection
  at once, and any collective fails after the group's ``timeout`` (``init_process_group(timeout=...)``;
  PyTorch's default is 30 minutes for gloo, 10 for nccl).
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .noise.table import hash_key

logger = logging.getLogger(__name__)

#: Header slots of each rank: failure flag, generation, 52-bit seed fingerprint, scores per member (P; 0: (N,)).
_HEADER = 4


class RemoteFitnessError(RuntimeError):
    """Another rank's fitness evaluation failed during this generation."""


class RankMismatchError(RuntimeError):
    """The ranks are not running the same ES run (different seed or generation)."""


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
            f"population_size={population_size} must be divisible by the world size {size} "
            f"(each of the {size} processes evaluates population_size / {size} members)"
        )
    count = population_size // size
    return rank * count, count


def init_from_torchrun() -> bool:
    """Initialise the default process group from ``torchrun``'s environment if nobody has yet.

    Only when the script runs under ``torchrun`` (``TORCHELASTIC_RUN_ID`` set) with ``WORLD_SIZE`` > 1 and
    no group exists. The backend is PyTorch's default for the machine (gloo for CPU tensors, plus nccl
    for CUDA ones when CUDA is available) and the timeout PyTorch's default; initialise the group
    yourself, before building the trainer, to choose them. Returns whether a group was created."""
    if not dist.is_available() or dist.is_initialized():
        return False
    if "TORCHELASTIC_RUN_ID" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group()
    atexit.register(_destroy)
    logger.info("initialised torch.distributed from torchrun's environment: rank %d of %d", *world())
    return True


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    """Where a collective's tensors must live: the CPU if the group has a CPU backend (gloo, mpi),
    otherwise the current device of its accelerator (nccl: ``torch.cuda.current_device()``)."""
    if not hasattr(dist, "get_backend_config"):  # older PyTorch: one backend per group
        return (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
    kinds = [entry.split(":")[0] for entry in dist.get_backend_config().split(",")]  # "cpu:gloo,cuda:nccl"
    if "cpu" in kinds:
        return torch.device("cpu")
    return torch.device(kinds[0], getattr(torch, kinds[0]).current_device())


def broadcast_seed(seed: int) -> int:
    """Rank 0's seed, so that ``seed=None`` (random) still gives every rank the same noise.

    A collective: every rank must build its trainers in the same order. Initialises the process group
    first when running under ``torchrun`` (see :func:`init_from_torchrun`)."""
    init_from_torchrun()
    if world()[1] == 1:
        return seed
    value = torch.tensor([seed], dtype=torch.int64, device=_device())
    dist.broadcast(value, src=0)
    return int(value.item())


def any_rank(flag: bool) -> bool:
    """``True`` on every rank if ``flag`` is true on any rank (one tiny all-reduce; free on one process).

    For decisions that must be collective, such as stopping on a time budget: with each rank reading
    its own clock, one rank could start a generation that the others never join."""
    if world()[1] == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_sum(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the ranks, as a new tensor on its device (a copy on one process).

    For state that every rank must share but each rank sees only a part of — e.g. the running
    observation statistics (count, sum, sum of squares) of an RL policy, gathered from this rank's members."""
    if world()[1] == 1:
        return tensor.clone()
    total = tensor.detach().to(device=_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def evaluate_sharded(
    population_size: int, evaluate: Callable[[int, int], Tensor], *, seed: int, generation: int
) -> Tensor:
    """Scores of the whole population, ``(N,)`` or ``(N, P)`` float64 on the CPU, each rank evaluating only its
    shard.

    ``evaluate(start, count)`` scores members ``start .. start+count-1`` (``(count,)`` or ``(count, P)``). If it
    raises on any rank, every rank raises (see the module docstring); ``seed`` and ``generation`` must agree
    across ranks, and so must P."""
    start, count = shard(population_size)
    if world()[1] == 1:
        return evaluate(start, count)
    try:
        local = evaluate(start, count).to(torch.float64)
        if local.shape[:1] != (count,) or local.dim() > 2:
            raise ValueError(f"evaluated scores of shape {tuple(local.shape)} for a shard of {count} members")
    except BaseException:
        try:
            gather_scores(None, population_size, seed=seed, generation=generation)  # the others raise
        except Exception:  # a dead or timed-out peer: the original error is the one to see
            logger.exception("could not tell the other ranks about this rank's failure")
        raise
    return gather_scores(local, population_size, seed=seed, generation=generation)


def gather_scores(
    local: Tensor | None, population_size: int, *, seed: int = 0, generation: int = 0
) -> Tensor:
    """All-gather every rank's ``(count,)`` or ``(count, P)`` scores into the ``(N,)`` or ``(N, P)`` population
    scores (float64, CPU).

    Two all-gathers: each rank's header (failure flag, generation, seed fingerprint, P), then — when every
    rank succeeded and all agree — the scores. ``local=None`` means this rank failed: the others raise
    :class:`RemoteFitnessError`, this one returns nothing useful (its caller re-raises its own error)."""
    size = world()[1]
    if size == 1:
        if local is None:
            raise ValueError("gather_scores: no scores on a single process")
        return local
    device = _device()
    mine = torch.zeros(_HEADER, dtype=torch.float64, device=device)
    mine[1] = generation
    mine[2] = hash_key(seed) >> 12  # 52 bits: exact in float64
    if local is None:
        mine[0] = 1.0
    elif local.dim() == 2:
        mine[3] = local.shape[1]
    headers = _all_gather(mine, size, generation).cpu()  # (R, _HEADER)
    failed = [q for q in range(size) if headers[q, 0] != 0]
    if failed:
        if local is None:
            return torch.empty(0, dtype=torch.float64)
        raise RemoteFitnessError(
            f"generation {generation}: fitness evaluation failed on rank(s) {failed} (see their traceback); "
            "parameters unchanged on every rank"
        )
    if not (headers[:, 1:3] == headers[0, 1:3]).all():
        states = ", ".join(f"rank {q}: generation {int(headers[q, 1])}" for q in range(size))
        raise RankMismatchError(
            f"the ranks are not running the same ES run ({states}; seeds "
            f"{'agree' if bool((headers[:, 2] == headers[0, 2]).all()) else 'differ'}). Initialise torch.distributed "
            "before building the trainer on every rank, and load the same checkpoint on every rank"
        )
    if not (headers[:, 3] == headers[0, 3]).all():
        raise ValueError(
            f"generation {generation}: the ranks' fitness functions returned different numbers of scores per "
            f"member ({', '.join(f'rank {q}: {int(headers[q, 3]) or 1}' for q in range(size))})"
        )
    assert local is not None  # a failed rank returned above
    parts = _all_gather(local.to(device=device, dtype=torch.float64).contiguous(), size, generation).cpu()
    return parts.reshape(population_size, *local.shape[1:])


def _all_gather(mine: Tensor, size: int, generation: int) -> Tensor:
    """``(R, *mine.shape)``: every rank's ``mine``, with a note on the failure of a dead or hung peer."""
    parts = torch.empty(size, *mine.shape, dtype=mine.dtype, device=mine.device)
    try:
        dist.all_gather(list(parts.unbind(0)), mine)
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python ≥ 3.11
            exc.add_note(
                f"eggroll_trainer: the all-gather of generation {generation}'s fitness scores failed; another "
                "rank has probably died, or hung past the process group's timeout (init_process_group(timeout=...))"
            )
        raise
    return parts
