"""eggroll_trainer.noise.perturbations: noise per parameter and generation, padding rows, the table's size."""

import pytest
import torch
from torch import nn

from eggroll_trainer.noise import NoiseSpec
from eggroll_trainer.noise.perturbations import generation_noise, table_size, with_padding_rows


def noises(params, specs, generation, noise_reuse=0):
    return generation_noise(params, specs, seed=3, table_size=1 << 12, generation=generation,
                            noise_reuse=noise_reuse, pairs=2)  # fmt: skip


def test_noise_epochs_and_frozen_parameters():
    params = [torch.zeros(3, 2, requires_grad=True), torch.zeros(3, 2, requires_grad=True), torch.zeros(3)]
    specs = [NoiseSpec(p.shape, rank=1 if p.dim() == 2 else None) for p in params[:2]] + [None]
    first = noises(params, specs, 0)
    assert first[2] is None
    assert first[0].base != first[1].base  # equal shapes, different keys
    assert noises(params, specs, 0)[0].base == first[0].base  # regenerated from the key
    assert noises(params, specs, 1)[0].base != first[0].base  # fresh noise every generation
    assert noises(params, specs, 1, noise_reuse=2)[0].base == noises(params, specs, 0, noise_reuse=2)[0].base
    params[1].requires_grad_(False)  # frozen mid-run: no noise from then on
    assert noises(params, specs, 0)[1] is None


def test_padding_rows_of_an_embedding_are_marked():
    model = nn.Sequential(nn.Embedding(5, 3, padding_idx=-1), nn.Linear(3, 2))
    spec = NoiseSpec(model[0].weight.shape, rank=1)
    assert with_padding_rows(spec, model[0].weight, model).zero_rows == (4,)
    assert with_padding_rows(spec, model[1].weight, model) is spec
    assert with_padding_rows(None, model[0].weight, model) is None


def test_table_size():
    specs = [NoiseSpec(torch.Size((4, 3)), rank=2), None]  # (4 + 3) · 2 = 14 values per pair
    assert table_size(specs, None, pairs=8) >= 14 * 8
    assert table_size(specs, 64, pairs=8) == 64
    with pytest.raises(
        ValueError, match=r"Invalid noise_table_size: 20 < 21 needed by a parameter of shape \(4, 3\)"
    ):
        table_size(specs, 20, pairs=8)
