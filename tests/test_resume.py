"""Checkpoint and resume: a restored model + trainer continue bit-identically."""

import copy
import io

import pytest
import torch
from conftest import make_data, make_model, neg_mse, neg_mse_batched, params_of, same

from eggroll_trainer import EGGROLLTrainer, VanillaESTrainer


def save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize(
    "cls, options",
    [
        (EGGROLLTrainer, dict(rank=2, optimizer="adam")),
        (EGGROLLTrainer, dict(rank=1, optimizer="sgd", momentum=0.9, noise_reuse=3)),
        (EGGROLLTrainer, dict(rank=2, optimizer="clipup", momentum=0.9, batched=True)),
        (VanillaESTrainer, dict(optimizer="adamw", weight_decay=0.01)),
        (EGGROLLTrainer, dict(rank=2, optimizer=torch.optim.NAdam, batched=True)),  # any torch.optim class
    ],
)
def test_resume_is_bit_identical_even_with_another_seed(cls, options, device):
    x, y = (t.to(device) for t in make_data())
    fitness = neg_mse_batched(x, y) if options.get("batched") else neg_mse(x, y)

    def build(model, seed):
        return cls(model.parameters(), model=model, fitness_fn=fitness, population_size=8, learning_rate=0.01,
                   sigma=0.1, seed=seed, **options)  # fmt: skip

    straight_model = make_model().to(device)
    straight = build(straight_model, seed=5)
    straight.train(6, verbose=False)

    first_model = make_model().to(device)
    first = build(first_model, seed=5)
    first.train(3, verbose=False)
    checkpoint = save_load({"model": first_model.state_dict(), "trainer": first.state_dict()})

    resumed_model = make_model(seed=99).to(device)  # different init, overwritten by the checkpoint
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = build(resumed_model, seed=1234)  # a different seed: the saved one wins
    resumed.load_state_dict(checkpoint["trainer"])
    resumed.train(3, verbose=False)

    assert same(params_of(straight_model), params_of(resumed_model))
    assert resumed.generation == straight.generation == 6
    assert resumed.fitness_history == straight.fitness_history
    assert resumed.best_fitness == straight.best_fitness
    assert same(params_of(resumed.get_best_model()), params_of(straight.get_best_model()))


def test_loading_a_state_with_another_population_size_is_refused():
    x, y = make_data()
    model = make_model()
    a = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8, seed=0)
    b = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=16, seed=0)
    with pytest.raises(ValueError, match="population_size"):
        b.load_state_dict(a.state_dict())


def test_state_dict_is_a_snapshot():
    x, y = make_data()
    model = make_model()
    trainer = EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8, seed=0
    )
    trainer.step()
    state = copy.deepcopy(trainer.state_dict())
    history = list(state["es"]["fitness_history"])
    trainer.step()
    assert state["es"]["fitness_history"] == history and state["es"]["generation"] == 1
