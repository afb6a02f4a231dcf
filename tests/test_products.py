"""The population product for member-major rows: every layout of rows, rank, mirrors and bias noise gives
member i exactly F.linear(x_i, W + σ s_i E_i, b + σ_b s_i β_i), and later forwards in the same call (an
RL rollout's next steps) give bit for bit the same again."""

import dataclasses

import pytest
import torch
from conftest import TwoLayer, linear_member_noise

from eggroll_trainer import current_population
from eggroll_trainer.population import Perturbed, product_variants, products
from eggroll_trainer.trainers.evaluation import evaluate_batched, evaluate_sequential


def scores(model, rows, rank, antithetic, frozen_bias, forwards=1, start=0, count=6, total=6, shared=False):
    """Batched and sequential scores of members ``start .. start+count-1``, b = ``rows`` rows each
    (``shared``: one block of rows, expanded, that every member sees)."""
    torch.manual_seed(0)
    x = torch.randn(rows, 4)
    params = [p for p in model.parameters() if not (frozen_bias and p.dim() == 1)]
    noises = linear_member_noise(model, rank, pairs=(total + 1) // 2)
    by_id = dict(zip(map(id, model.parameters()), noises))
    perturbed = {id(p): Perturbed(by_id[id(p)], 0.1) for p in params}

    def batched_fitness(m):
        k = current_population().size
        inp = x.expand(k, rows, 4) if shared else x.repeat(k, 1)  # shared block, or member-major rows
        outs = [m(inp).view(k, rows) for _ in range(forwards)]
        for later in outs[1:]:
            assert torch.equal(later, outs[0])  # the cached per-call terms give the same forward
        return outs[0].sum(-1)

    batched = evaluate_batched(
        model, perturbed, start, count, population_size=total, antithetic=antithetic, batch_dim=0,
        chunk_size=None, fitness_fn=batched_fitness, closure=None,
    )  # fmt: skip
    live = [(p, by_id[id(p)], 0.1) for p in params]
    with torch.no_grad():
        sequential = evaluate_sequential(live, start, count, antithetic, lambda: float(model(x).sum()))
    return batched, sequential


@pytest.mark.parametrize("rows", [1, 3, 8], ids=["1-row", "3-rows", "8-rows-fused"])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("antithetic", [True, False], ids=["mirrored", "one-sided"])
@pytest.mark.parametrize("frozen_bias", [False, True], ids=["bias-noise", "plain-bias"])
def test_member_major_rows_equal_member_by_member(rows, rank, antithetic, frozen_bias):
    # three forwards: the first writes into a fresh members' bias, the second keeps one, the third reuses it
    batched, sequential = scores(TwoLayer(), rows, rank, antithetic, frozen_bias, forwards=3)
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)


def test_irregular_slice_of_mirrored_pairs():
    """A slice that starts inside a pair (members 1..4 of 6): groups are members, signs folded in."""
    batched, sequential = scores(TwoLayer(), 1, 2, True, False, start=1, count=4)
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("rank", [1, 3])
def test_shared_rows_equal_member_by_member(rows, rank):
    batched, sequential = scores(TwoLayer(), rows, rank, True, False, shared=True)
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)


def test_members_bias_too_large_to_keep_is_rebuilt_per_forward(monkeypatch):
    chosen = products.choose_variant
    unkept = lambda *args, **kwargs: dataclasses.replace(chosen(*args, **kwargs), keep_member_bias=False)  # noqa: E731
    monkeypatch.setattr(products, "choose_variant", unkept)
    batched, sequential = scores(TwoLayer(), 1, 1, True, False, forwards=2)
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("shared", [False, True], ids=["member-major", "shared"])
@pytest.mark.parametrize("antithetic", [True, False], ids=["mirrored", "one-sided"])
def test_the_reference_product_equals_member_by_member(monkeypatch, rows, shared, antithetic):
    """What the CPU variants are checked against (``test_product_variants``) is itself right."""
    monkeypatch.setattr(products, "choose_variant", lambda *args, **kwargs: product_variants.REFERENCE)
    batched, sequential = scores(TwoLayer(), rows, 2, antithetic, False, forwards=2, shared=shared)
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)
