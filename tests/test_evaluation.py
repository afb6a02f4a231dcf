"""eggroll_trainer.trainers.evaluation: a slice of members scored one by one or in population mode."""

import math
import warnings

import pytest
import torch
from conftest import Recorder, linear_member_noise, make_data, make_model, neg_mse, neg_mse_batched
from torch import nn

from eggroll_trainer import EGGROLLTrainer, ESTrainer, current_population
from eggroll_trainer.population import Perturbed
from eggroll_trainer.trainers.evaluation import (
    as_score,
    check_scores,
    evaluate_batched,
    evaluate_sequential,
    scorer,
)


def test_as_score():
    assert as_score(2, "fitness_fn") == 2.0 and as_score(torch.tensor([[1.5]]), "closure") == 1.5
    with pytest.raises(ValueError, match="closure must return a single number, got a tensor of shape"):
        as_score(torch.ones(2), "closure")
    with pytest.raises(TypeError, match="fitness_fn must return a number, got str"):
        as_score("high", "fitness_fn")


def test_scorer_negates_a_closure_loss():
    model = nn.Linear(1, 1)
    assert scorer(model, lambda m: 3.0, None)() == 3.0
    assert scorer(model, lambda m: 3.0, lambda: 2.0)() == -2.0  # the closure wins, as a loss


def test_sequential_members_are_mirrored_and_theta_restored_bit_exactly():
    model = nn.Linear(3, 2)
    theta = [p.detach().clone() for p in model.parameters()]
    noises = linear_member_noise(model, rank=1)
    live = [(p, n, 0.1) for p, n in zip(model.parameters(), noises)]
    rec = Recorder(lambda m: float(m.weight.sum()))
    with torch.no_grad():  # as in step()
        scores = evaluate_sequential(live, 1, 4, antithetic=True, score=lambda: rec(model))  # members 1..4
    assert scores.shape == (4,) and scores.dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), theta))
    w = [s["weight"] - theta[0] for s in rec.snapshots]  # members 1, 2, 3, 4 → pairs 0-, 1+, 1-, 2+
    assert torch.allclose(w[1], -w[2]) and not torch.allclose(w[0], w[1])
    expected = noises[0].dense(torch.tensor([0]), torch.tensor([-1.0]))[0] * 0.1
    assert torch.allclose(w[0], expected, atol=1e-7)


def test_sequential_restores_theta_when_the_score_raises():
    model = nn.Linear(3, 2)
    theta = [p.detach().clone() for p in model.parameters()]
    live = [(p, n, 0.1) for p, n in zip(model.parameters(), linear_member_noise(model))]

    def boom():
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError), torch.no_grad():
        evaluate_sequential(live, 0, 2, True, boom)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), theta))


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_batched_slice_equals_sequential(chunk_size):
    x, y = make_data(rows=5)
    model = make_model()
    noises = linear_member_noise(model, rank=2, pairs=4)
    params = list(model.parameters())
    perturbed = {id(p): Perturbed(n, 0.05) for p, n in zip(params, noises)}
    batched = evaluate_batched(
        model, perturbed, 1, 5, population_size=8, antithetic=True, batch_dim=0, chunk_size=chunk_size,
        fitness_fn=neg_mse_batched(x, y), closure=None,
    )  # fmt: skip
    fitness = neg_mse(x, y)
    with torch.no_grad():
        live = [(p, n, 0.05) for p, n in zip(params, noises)]
        sequential = evaluate_sequential(live, 1, 5, True, lambda: fitness(model))
    assert torch.allclose(batched, sequential, atol=1e-5)


def test_batched_closure_losses_are_negated_and_counted():
    model = nn.Linear(2, 1)
    noises = linear_member_noise(model, pairs=2)
    perturbed = {id(p): Perturbed(n, 0.1) for p, n in zip(model.parameters(), noises)}
    options = dict(population_size=4, antithetic=True, batch_dim=0, chunk_size=None, fitness_fn=None)

    def losses(values):
        return lambda: model(torch.zeros(4, 2)).view(-1) * 0 + values  # one row per member

    scores = evaluate_batched(model, perturbed, 0, 4, closure=losses(torch.arange(4.0)), **options)
    assert scores.tolist() == [-0.0, -1.0, -2.0, -3.0]
    with pytest.raises(ValueError, match="batched closure must return 4 values"):
        evaluate_batched(
            model, perturbed, 0, 4, closure=lambda: model(torch.zeros(4, 2)).view(-1)[:3], **options
        )
    sizes = []

    def count(m):
        sizes.append(current_population().size)
        return m(torch.zeros(sizes[-1], 2)).view(-1)

    evaluate_batched(
        model, perturbed, 0, 4, **{**options, "chunk_size": 3, "fitness_fn": count}, closure=None
    )
    assert sizes == [3, 1]


def test_check_scores():
    finite = check_scores(torch.tensor([1.0, 2.0], dtype=torch.float64), 0)
    assert finite.tolist() == [True, True]
    with pytest.warns(RuntimeWarning, match="generation 3: 1 of 3 fitness values are NaN/inf"):
        finite = check_scores(torch.tensor([1.0, math.inf, 0.0]), 3)
    assert finite.tolist() == [True, False, True]
    with pytest.raises(RuntimeError, match="no member returned a finite fitness"):
        check_scores(torch.tensor([math.nan, -math.inf]), 0)


@pytest.mark.parametrize("flat", [False, True])
def test_nan_warning_points_at_the_step_call(flat):
    class Flat(ESTrainer):
        def compute_update(self, perturbations, fitnesses):
            return super().compute_update(perturbations, fitnesses)

    calls = {"n": 0}

    def sometimes_nan(m):
        calls["n"] += 1
        return math.nan if calls["n"] == 2 else 0.0

    model = nn.Linear(2, 1)
    trainer = (Flat if flat else EGGROLLTrainer)(
        model.parameters(), model, sometimes_nan, population_size=4, seed=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.step()
    assert [w.filename for w in caught if issubclass(w.category, RuntimeWarning)] == [__file__]
