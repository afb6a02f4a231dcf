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


def my_shaping(scores):
    return scores - scores.mean()


def build_trainer(model, **options):
    x, y = make_data()
    base = dict(model=model, fitness_fn=neg_mse(x, y), population_size=8, seed=0, rank=2)
    return EGGROLLTrainer(model.parameters(), **(base | options))


@pytest.mark.parametrize(
    "saved, loading",
    [
        (dict(rank=2), dict(rank=1)),
        (dict(antithetic=True), dict(antithetic=False)),
        (dict(noise_reuse=0), dict(noise_reuse=4)),
        (dict(group_size=0), dict(group_size=4)),
        (dict(elite_k=0), dict(elite_k=2)),
        (dict(fitness_shaping="zscore"), dict(fitness_shaping="centered_rank")),
        (dict(fitness_shaping=my_shaping), dict(fitness_shaping="raw")),
    ],
    ids=["rank", "antithetic", "noise_reuse", "group_size", "elite_k", "fitness_shaping", "callable_shaping"],
)
def test_loading_a_state_with_other_settings_is_refused_and_changes_nothing(saved, loading):
    (name,) = saved
    state = save_load(build_trainer(make_model(), **saved).state_dict())
    trainer = build_trainer(make_model(), **loading)
    trainer.step()
    before = copy.deepcopy(trainer.state_dict())
    with pytest.raises(ValueError, match=rf"{name}=.*{name}="):
        trainer.load_state_dict(state)
    after = trainer.state_dict()
    assert after["es"]["generation"] == before["es"]["generation"] == 1
    assert after["state"].keys() == before["state"].keys()


def test_settings_are_saved_by_name_and_load_with_weights_only():
    trainer = build_trainer(make_model(), fitness_shaping=my_shaping, noise_reuse=3, elite_k=1)
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    es = torch.load(buffer, weights_only=True)["es"]
    assert es["fitness_shaping"] == f"{__name__}.my_shaping"
    assert (es["rank"], es["antithetic"], es["noise_reuse"], es["group_size"], es["elite_k"]) == (
        2,
        True,
        3,
        0,
        1,
    )
    # the same shaping given as its name or as the built-in function is the same setting
    state = build_trainer(make_model(), fitness_shaping="centered_rank").state_dict()
    from eggroll_trainer import centered_rank

    build_trainer(make_model(), fitness_shaping=centered_rank).load_state_dict(state)


def test_a_checkpoint_without_the_settings_still_resumes_exactly():
    """A state dict written by the version at commit fb4a240 (no rank/antithetic/... keys) loads and resumes
    bit-identically."""
    options = dict(noise_reuse=2, group_size=4, fitness_shaping="centered_rank", optimizer="adam")
    straight_model = make_model()
    straight = build_trainer(straight_model, **options)
    straight.train(4, verbose=False)

    first_model = make_model()
    first = build_trainer(first_model, **options)
    first.train(2, verbose=False)
    old = save_load({"model": first_model.state_dict(), "trainer": first.state_dict()})
    kept = ("generation", "seed", "population_size", "noise_table_size", "fitness_history", "best_fitness",
            "best_params")  # fmt: skip
    old["trainer"]["es"] = {key: old["trainer"]["es"][key] for key in kept}  # the fb4a240 layout

    resumed_model = make_model(seed=99)
    resumed_model.load_state_dict(old["model"])
    resumed = build_trainer(resumed_model, **options)
    resumed.load_state_dict(old["trainer"])
    resumed.train(2, verbose=False)
    assert same(params_of(straight_model), params_of(resumed_model))
    assert resumed.fitness_history == straight.fitness_history
