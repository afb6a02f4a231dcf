"""eggroll_trainer.trainers.compat: the 0.1.0 flat-vector protocol."""

import pytest
import torch
from torch import nn

from eggroll_trainer import ESTrainer, VanillaESTrainer
from eggroll_trainer.shaping import raw
from eggroll_trainer.trainers.compat import dense_perturbations, es_update, flat_generation, split


def fitness(model):
    return -float((model.weight**2).sum() + (model.bias**2).sum())


class Halved(ESTrainer):
    def compute_update(self, perturbations, fitnesses):
        return 0.5 * super().compute_update(perturbations, fitnesses)


def test_es_update_by_hand():
    eps = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    fit = torch.tensor([3.0, 1.0, -1.0])
    # raw shaping: u = Σ f_i ε_i / (N σ) = ([3, 0] + [-1, 0] + [0, -2]) / (3 · 0.5)
    assert torch.allclose(es_update(eps, fit, raw, 0, 0.5), torch.tensor([2.0, -2.0]) / 1.5)


def test_split_is_views_in_parameter_order():
    params = [torch.zeros(2, 3), torch.zeros(4)]
    flat = torch.arange(10.0)
    pieces = split(flat, params)
    assert [p.tolist() for p in pieces] == [[0.0, 1, 2, 3, 4, 5], [6.0, 7, 8, 9]]
    assert pieces[1]._base is flat


def test_default_perturbations_are_the_keyed_noise_mirrored():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # frozen: zero columns
    trainer = VanillaESTrainer(model.parameters(), model, fitness, population_size=4, seed=0)
    eps = trainer.sample_perturbations(4)
    assert eps.shape == (4, 8)
    assert torch.equal(eps[0], -eps[1]) and torch.equal(eps[2], -eps[3]) and not torch.equal(eps[0], eps[2])
    assert torch.equal(eps[:, 6:], torch.zeros(4, 2))
    noises = trainer._generation_noise(0)
    assert torch.equal(dense_perturbations(list(model.parameters()), noises, 4, True), eps)


def test_flat_generation_writes_nothing_and_step_applies_it():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    trainer = Halved(model.parameters(), model, fitness, population_size=6, seed=1)
    theta = trainer.current_params
    with torch.no_grad():  # as in step()
        scores, finite, best, grads = flat_generation(
            list(model.parameters()),
            trainer.sample_perturbations,
            trainer.compute_update,
            lambda: fitness(model),
            population_size=6,
            sigma=trainer.sigma,
            generation=0,
            best_fitness=None,
        )
    assert torch.equal(trainer.current_params, theta) and trainer.best_fitness is None
    assert scores.shape == (6,) and bool(finite.all())
    assert best is not None and best[0] == float(scores.max())
    assert [g.shape for g in grads] == [p.shape for p in model.parameters()]  # −ĝ, as torch.optim reads .grad
    trainer.step()  # the same generation through step(): θ moves by lr · ĝ (plain SGD)
    moved = trainer.current_params - theta
    assert torch.allclose(moved, -0.01 * torch.cat([g.flatten() for g in grads]), atol=1e-7)
    assert trainer.best_fitness == best[0]


def test_wrong_perturbation_shape_is_named():
    class Bad(ESTrainer):
        def sample_perturbations(self, population_size):
            return torch.zeros(population_size, 3)

    model = nn.Linear(3, 2)
    trainer = Bad(model.parameters(), model, fitness, population_size=4, seed=0)
    with pytest.raises(ValueError, match=r"sample_perturbations must return shape \(4, 8\), got \(4, 3\)"):
        trainer.step()


def test_flat_subclasses_cannot_be_batched():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="Invalid batched"):
        Halved(model.parameters(), model, fitness, population_size=4, batched=True)
