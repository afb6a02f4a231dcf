r"""Which parameters are perturbed, and the keyed noise each one gets in a generation.

A trainer fixes one ``noise.NoiseSpec`` per parameter tensor at construction (its
``_noise_spec`` hook: low rank, full rank or ``None``, frozen). In generation $t$ parameter $j$ reads the noise
of epoch $e = \lfloor t / \texttt{noise\_reuse} \rfloor$ (or $e = t$ without reuse) under the key
$\mathrm{hash}(\text{seed}, j, e)$ from the shared table: nothing per member is stored, and every rank, the
update and a resumed run regenerate the same numbers.

A parameter with ``requires_grad=False`` gets no noise in that generation (as ``torch.optim`` skips a
parameter without a gradient), so freezing mid-run works.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from .params import NoiseSpec, ParamNoise
from .table import default_table_size, hash_key, noise_table, table_absmax


def with_padding_rows(spec: NoiseSpec | None, param: Tensor, model: nn.Module) -> NoiseSpec | None:
    """``spec`` with the ``padding_idx`` row of every ``nn.Embedding`` of ``model`` whose weight is ``param``
    marked as never perturbed nor updated (autograd never updates that row either)."""
    if spec is None:
        return None
    rows = {
        m.padding_idx % param.shape[0]
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.weight is param and m.padding_idx is not None
    }
    return dataclasses.replace(spec, zero_rows=tuple(sorted(rows))) if rows else spec


def is_expert_stack(param: Tensor, model: nn.Module) -> bool:
    """Whether ``param`` is a mixture-of-experts stack (E, out, in) — Hugging Face Mixtral's, Qwen-MoE's
    ``gate_up_proj``/``down_proj`` — rather than a 1-D convolution's kernel (out, in, k): a 3-D tensor that no
    ``nn.Conv*`` module holds as its weight."""
    if param.dim() != 3:
        return False
    convs = (nn.modules.conv._ConvNd,)
    return not any(isinstance(m, convs) and m.weight is param for m in model.modules())


def table_size(specs: list[NoiseSpec | None], requested: int | None, pairs: int) -> int:
    """Values in the shared noise table: ``requested``, or sized from the parameters (at most 2^25).

    Pair $k$ of a parameter whose noise spans $L$ values reads ``table[base + k·stride :][:L]``, so the table
    must hold at least $L + P - 1$ values for $P$ pairs; raises ``ValueError`` otherwise."""
    size = requested or default_table_size([s.length for s in specs if s is not None], pairs)
    for spec in specs:
        if spec is not None and size < spec.length + pairs - 1:
            raise ValueError(
                f"Invalid noise_table_size: {size} < {spec.length + pairs - 1} "
                f"needed by a parameter of shape {tuple(spec.shape)}"
            )
    return size


def generation_noise(
    params: list[Tensor],
    specs: list[NoiseSpec | None],
    *,
    seed: int,
    table_size: int,
    generation: int,
    noise_reuse: int,
    pairs: int,
) -> list[ParamNoise | None]:
    """Per parameter, its noise for all ``pairs`` pairs of ``generation`` (``None``: not perturbed)."""
    epoch = generation // noise_reuse if noise_reuse >= 2 else generation
    noises: list[ParamNoise | None] = []
    for index, (p, spec) in enumerate(zip(params, specs)):
        if spec is None or not p.requires_grad:  # frozen, as torch.optim skips parameters without grad
            noises.append(None)
            continue
        table = noise_table(seed, table_size, p.device, p.dtype)
        absmax = table_absmax(seed, table_size, p.device, p.dtype)
        noises.append(ParamNoise(table, spec, hash_key(seed, index, epoch), pairs, absmax))
    return noises
