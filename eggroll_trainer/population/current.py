"""Which members are being evaluated right now: what a batched fitness function asks to shape its batch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class PopulationInfo:
    """The members one population-mode call evaluates: ``start .. start+size-1`` of ``total``."""

    size: int
    start: int
    total: int


_local = threading.local()


def current_population() -> PopulationInfo | None:
    """The members being evaluated right now, or ``None`` outside a population-mode evaluation.

    A batched fitness function uses it to shape its batch: ``x.expand(info.size, *x.shape)`` for shared data
    (b = 1), or ``input_ids.repeat(info.size, 1)`` for b prompts per member (K·b rows, member-major)."""
    stack = getattr(_local, "populations", [])
    return stack[-1] if stack else None


@contextmanager
def announce(info: PopulationInfo) -> Iterator[None]:
    """Within the block, ``current_population()`` is ``info`` (population mode and the center's evaluation)."""
    stack = _local.__dict__.setdefault("populations", [])
    stack.append(info)
    try:
        yield
    finally:
        stack.pop()
