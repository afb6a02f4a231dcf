"""eggroll_trainer.updates.estimate: pair weights and ĝ on hand-computed cases; the finite check."""

import math

import pytest
import torch

from eggroll_trainer.noise import NoiseSpec, ParamNoise
from eggroll_trainer.updates.estimate import all_finite, check_finite, estimate, pair_weights, unproven


def arange_noise(shape, rank, pairs, size, device="cpu"):
    """Noise read from table = 0, 1, 2, … at base 0: every E_k can be written down by hand."""
    table = torch.arange(size, dtype=torch.float32).to(device)
    noise = ParamNoise(table, NoiseSpec(torch.Size(shape), rank=rank), key=0, pairs=pairs)
    assert noise.base == 0 and noise.stride == noise.spec.length  # disjoint windows, from the start
    return noise


def test_pair_weights_fold_mirrored_members():
    shaped = torch.tensor([1.0, -1.0, 0.5, 0.25], dtype=torch.float64)
    assert pair_weights(shaped, antithetic=True).tolist() == [2.0, 0.25]  # f̃_2k - f̃_2k+1
    assert pair_weights(shaped, antithetic=False).tolist() == shaped.tolist()
    odd = pair_weights(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64), antithetic=True)
    assert odd.tolist() == [2.0, 2.0]  # the last member has no mirror
    assert odd.dtype == torch.float64


def test_full_rank_estimate_by_hand(device):
    noise = arange_noise((2,), rank=None, pairs=2, size=8, device=device)  # E_0 = [0, 1], E_1 = [2, 3]
    weights = torch.tensor([2.0, 0.25], dtype=torch.float64)  # on the CPU, as the trainer makes them
    (g,) = estimate([torch.zeros(2, device=device)], [noise], [0.5], weights, population_size=4)
    # (2·[0, 1] + 0.25·[2, 3]) / (N σ = 2)
    assert g.device == noise.table.device and g.cpu().tolist() == [0.25, 1.375]


def test_low_rank_estimate_by_hand(device):
    noise = arange_noise((2, 2), rank=1, pairs=2, size=16, device=device)
    # pair 0: Aᵀ = [0, 1], Bᵀ = [2, 3]; pair 1: Aᵀ = [4, 5], Bᵀ = [6, 7]; E_k = A_k B_kᵀ
    e0 = torch.tensor([[0.0, 0.0], [2.0, 3.0]])
    e1 = torch.tensor([[24.0, 28.0], [30.0, 35.0]])
    dense = noise.dense(torch.tensor([0, 1]), torch.tensor([1.0, 1.0]))  # CPU pairs and signs: E where θ is
    assert dense.device == noise.table.device and torch.equal(dense.cpu(), torch.stack([e0, e1]))
    weights = pair_weights(
        torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64), antithetic=True
    )  # [1, -1]
    (g,) = estimate([torch.zeros(2, 2, device=device)], [noise], [1.0], weights, population_size=4)
    assert torch.allclose(g.cpu(), (e0 - e1) / 4)


def test_chunked_sum_equals_one_chunk_and_unperturbed_parameters_get_none(device):
    table = torch.randn(1 << 12, generator=torch.Generator().manual_seed(0)).to(device)
    noise = ParamNoise(table, NoiseSpec(torch.Size((5, 3)), rank=2), key=12345, pairs=7)
    weights = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = [torch.zeros(5, 3, device=device), torch.zeros(4, device=device)]
    whole = estimate(params, [noise, None], [0.1, 0.1], weights, 14)
    chunked = estimate(params, [noise, None], [0.1, 0.1], weights, 14, chunk_size=2)  # one pair per chunk
    assert whole[1] is None and chunked[1] is None
    assert torch.allclose(whole[0], chunked[0], atol=1e-6)


def test_check_finite_is_all_or_nothing():
    check_finite([torch.ones(3), None, torch.empty(0)], generation=0)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(RuntimeError, match="generation 7: the ES estimate is not finite"):
            check_finite([torch.ones(3), torch.tensor([0.0, bad])], generation=7)
    assert all_finite(torch.zeros(0)) and not all_finite(torch.tensor([1.0, math.nan]))


def test_finite_weights_prove_a_finite_estimate_and_huge_or_nan_ones_do_not():
    table = torch.randn(1 << 12, generator=torch.Generator().manual_seed(0))
    absmax = float(table.abs().max())
    spec = NoiseSpec(torch.Size((5, 3)), rank=2)
    known = ParamNoise(table, spec, key=1, pairs=4, absmax=absmax)
    unknown = ParamNoise(table, spec, key=1, pairs=4)  # no table bound: never proven
    assert known.entry_bound == pytest.approx(math.sqrt(2) * absmax**2)
    dense = known.dense(torch.arange(4), torch.ones(4))
    assert float(dense.abs().max()) <= known.entry_bound  # the bound holds for every E_k

    def left(weights):
        grads = estimate([torch.zeros(5, 3)] * 2, [known, unknown], [0.1, 0.1], weights, 8)
        return [any(g is x for x in unproven(grads, [known, unknown], [0.1, 0.1], weights, 8)) for g in grads]

    assert left(torch.ones(4, dtype=torch.float64)) == [False, True]
    assert left(torch.full((4,), 1e38, dtype=torch.float64)) == [True, True]  # the bound passes float32's max
    assert left(torch.tensor([1.0, math.nan, 0.0, 0.0], dtype=torch.float64)) == [True, True]


def test_descent_is_the_negated_ascent(device):
    table = torch.randn(1 << 12, generator=torch.Generator().manual_seed(0)).to(device)
    noise = ParamNoise(table, NoiseSpec(torch.Size((4, 6)), rank=3), key=7, pairs=5)
    weights = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (ascent,) = estimate([torch.zeros(4, 6, device=device)], [noise], [0.05], weights, 10)
    (descent,) = estimate([torch.zeros(4, 6, device=device)], [noise], [0.05], weights, 10, descent=True)
    assert torch.equal(descent, -ascent)
    # and both equal Σ_k w_k E_k / (N σ) computed from the dense noise
    dense = noise.dense(torch.arange(5), torch.ones(5)).cpu()
    expected = torch.einsum("k,kij->ij", weights.float(), dense) / (10 * 0.05)
    assert torch.allclose(ascent.cpu(), expected, atol=1e-5)
