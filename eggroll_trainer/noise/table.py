"""The shared noise table and the keys that address it.

One block of i.i.d. N(0, 1) values (the OpenAI-ES "shared noise table") is made once per seed; every
perturbation is a view into it at an offset given by a 64-bit hash of its key (``noise.ParamNoise``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["hash_key", "noise_table", "table_absmax", "default_table_size", "MIN_TABLE_SIZE",
           "MAX_AUTO_TABLE_SIZE"]  # fmt: skip

_MASK64 = (1 << 64) - 1

#: Smallest and largest table the automatic sizing picks (in float values).
MIN_TABLE_SIZE = 1 << 20
MAX_AUTO_TABLE_SIZE = 1 << 25


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def hash_key(*words: int) -> int:
    """A 64-bit hash of a tuple of integers (splitmix64 chained); pure and platform independent."""
    h = 0x6A09E667F3BCC909
    for w in words:
        h = _splitmix64(h ^ (w & _MASK64))
    return h


@functools.lru_cache(maxsize=4)
def noise_table(seed: int, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The shared table: ``size`` N(0, 1) values made on the CPU from ``seed`` (bit-identical on every
    machine and rank), then moved to ``device``. Cached, so trainers with the same seed share it."""
    generator = torch.Generator(device="cpu").manual_seed(hash_key(seed, 0x7AB1E) >> 1)
    values = torch.randn(size, generator=generator, dtype=torch.float32)
    return values.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=4)
def table_absmax(seed: int, size: int, device: torch.device, dtype: torch.dtype) -> float:
    """max |value| of ``noise_table(seed, size, device, dtype)`` (about 5.5 for 2^25 values), computed once."""
    return float(noise_table(seed, size, device, dtype).abs().max())


def default_table_size(slice_lengths: list[int], num_pairs: int) -> int:
    """A power of two holding 4× the largest per-parameter population span (so windows of one
    generation never overlap), clamped to [2^20, 2^25] values and never below 2× one slice."""
    need = max((num_pairs * length for length in slice_lengths), default=1)
    size = 1 << max(0, math.ceil(math.log2(4 * need)))
    size = min(max(size, MIN_TABLE_SIZE), MAX_AUTO_TABLE_SIZE)
    longest = max(slice_lengths, default=1)
    while size < 2 * longest + num_pairs:
        size *= 2
    return size
