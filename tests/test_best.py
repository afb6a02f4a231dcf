"""eggroll_trainer.trainers.best: the best member is found, rebuilt exactly, copied into a model and reloaded."""

import math

import torch
from torch import nn

from eggroll_trainer.noise import NoiseSpec, ParamNoise
from eggroll_trainer.trainers.best import best_member, best_model, rebuild_member, restored
from eggroll_trainer.trainers.evaluation import evaluate_sequential


def test_best_member_skips_non_finite_and_must_beat_the_best_so_far():
    scores = torch.tensor([1.0, math.nan, 3.0, math.inf, 2.0], dtype=torch.float64)
    assert best_member(scores, None) == 2
    assert best_member(scores, 2.5) == 2
    assert best_member(scores, 3.0) is None  # a tie is not an improvement
    assert best_member(torch.tensor([0.0, 5.0, 5.0]), None) == 1  # first of equals


def test_rebuilt_member_is_bit_identical_to_the_evaluated_one():
    model = nn.Linear(4, 3)
    table = torch.randn(1 << 12, generator=torch.Generator().manual_seed(0))
    noises = [ParamNoise(table, NoiseSpec(model.weight.shape, rank=2), 11, 3), None]
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    seen = []
    live = [(params[0], noises[0], 0.2)]
    with torch.no_grad():
        evaluate_sequential(
            live, 0, 6, True, lambda: seen.append([p.detach().clone() for p in params]) or 0.0
        )
    for member in range(6):
        values = rebuild_member(params, noises, [0.2, 0.2], member, antithetic=True)
        assert all(torch.equal(a, b) for a, b in zip(values, seen[member]))
        assert torch.equal(values[1], theta[1])  # no noise: θ itself, as a fresh tensor
        assert values[1] is not params[1]
    assert all(torch.equal(p, t) for p, t in zip(params, theta))


def test_best_model_is_a_copy_holding_the_values():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    params = list(model.parameters())
    values = [torch.full_like(p, float(i)) for i, p in enumerate(params)]
    copied = best_model(model, params, values)
    assert copied is not model
    assert all(torch.equal(a, b) for a, b in zip(copied.parameters(), values))
    assert not torch.equal(model[0].weight, values[0])
    untouched = best_model(model, params, None)
    assert all(torch.equal(a, b) for a, b in zip(untouched.parameters(), model.parameters()))


def test_restored_follows_the_parameters_dtype():
    params = [torch.zeros(2, dtype=torch.float64)]
    saved = [torch.ones(2, dtype=torch.float32)]
    (value,) = restored(saved, params)
    assert value.dtype == torch.float64 and value.tolist() == [1.0, 1.0]
    assert restored(None, params) is None
