"""Noise: keys, not storage (DESIGN §2), read in the estimator's order.

* ``table`` — the shared table of N(0, 1) values and the 64-bit keys that address it;
* ``params`` — a parameter's noise: its ``NoiseSpec`` (low rank ``A Bᵀ/√r``, full rank, or frozen) and the
  ``ParamNoise`` of one generation, a view into the table per antithetic pair;
* ``perturbations`` — which parameters a trainer perturbs, and the noise each gets in generation t.
"""

from .params import NoiseSpec, ParamNoise, member_pairs, num_pairs
from .perturbations import generation_noise, table_size, with_padding_rows
from .table import default_table_size, hash_key, noise_table

__all__ = [
    "NoiseSpec",
    "ParamNoise",
    "member_pairs",
    "num_pairs",
    "generation_noise",
    "table_size",
    "with_padding_rows",
    "default_table_size",
    "hash_key",
    "noise_table",
]
