"""Bad input gets a clear error naming the problem, and loses nothing."""

import math
import warnings

import pytest
import torch
from conftest import make_data, make_model, neg_mse, neg_mse_batched, params_of, same

from eggroll_trainer import EGGROLLTrainer, VanillaESTrainer


def build(**overrides):
    model = make_model()
    options = dict(population_size=8, learning_rate=0.01, sigma=0.1, seed=0)
    options.update(overrides)
    return EGGROLLTrainer(model.parameters(), model=model, fitness_fn=lambda m: 0.0, **options)


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(population_size=0), "population_size"),
        (dict(population_size=-4), "population_size"),
        (dict(population_size=2.5), "population_size"),
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=-0.1), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(learning_rate=-0.1), "learning rate"),
        (dict(lr=float("inf")), "learning rate"),
        (dict(rank=0), "rank"),
        (dict(noise_reuse=-1), "noise_reuse"),
        (dict(group_size=3), "group_size"),
        (dict(group_size=-1), "group_size"),
        (dict(fitness_shaping="softmax"), "fitness_shaping"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(momentum=1.5), "momentum"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(nesterov=True), "nesterov"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(noise_table_size=1), "noise_table_size"),
        (dict(seed="zero"), "seed"),
        (dict(max_speed=0.0), "max_speed"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_them(overrides, name):
    with pytest.raises(ValueError, match=name):
        build(**overrides)


def test_unknown_keyword_is_a_type_error_not_swallowed():
    with pytest.raises(TypeError):
        build(learnin_rate=0.1)


def test_invalid_model_and_fitness():
    model = make_model()
    with pytest.raises(ValueError, match="model"):
        EGGROLLTrainer(model.parameters(), model="not a module", fitness_fn=lambda m: 0.0)
    with pytest.raises(ValueError, match="fitness_fn"):
        EGGROLLTrainer(model.parameters(), model=model, fitness_fn=42)
    with pytest.raises(ValueError, match="empty parameter list"):
        EGGROLLTrainer([], model=model, fitness_fn=lambda m: 0.0)


def test_per_group_invalid_sigma():
    model = make_model()
    with pytest.raises(ValueError, match="sigma"):
        EGGROLLTrainer([{"params": model.parameters(), "sigma": -1.0}], model=model, fitness_fn=lambda m: 0.0)


def test_noise_table_too_small_for_a_parameter():
    with pytest.raises(ValueError, match="noise_table_size"):
        build(noise_table_size=8)


@pytest.mark.parametrize("batched", [False, True])
def test_fitness_that_raises_propagates_and_leaves_theta_exact(batched):
    x, y = make_data()
    model = make_model()
    theta = params_of(model)
    calls = {"n": 0}
    inner = neg_mse_batched(x, y) if batched else neg_mse(x, y)

    def flaky(m):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulator crashed")
        return inner(m)

    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=flaky, population_size=8, sigma=0.5,
                             seed=0, batched=batched, chunk_size=2 if batched else None)  # fmt: skip
    with pytest.raises(RuntimeError, match="simulator crashed"):
        trainer.step()
    assert same(theta, params_of(model)) and trainer.generation == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the model is an ordinary module again: no hooks or patched forwards left behind
    assert not any(m._forward_hooks for m in model.modules())
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_nan_scores_rank_worst_with_a_warning():
    x, y = make_data()
    fitness = neg_mse(x, y)
    calls = {"n": 0}

    def sometimes_nan(m):
        calls["n"] += 1
        return float("nan") if calls["n"] % 4 == 0 else fitness(m)

    model = make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=sometimes_nan, population_size=8,
                             seed=0)  # fmt: skip
    with pytest.warns(RuntimeWarning, match="NaN"):
        metrics = trainer.step()
    assert math.isfinite(metrics["mean_fitness"]) and math.isfinite(trainer.best_fitness)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_no_finite_score_raises_without_touching_weights():
    model = make_model()
    theta = params_of(model)
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=lambda m: float("inf") * 0,
                             population_size=8, seed=0)  # fmt: skip
    with pytest.raises(RuntimeError, match="finite"):
        trainer.step()
    assert same(theta, params_of(model)) and trainer.generation == 0


def test_fitness_returning_garbage():
    model = make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=lambda m: "good", population_size=4)
    with pytest.raises(TypeError, match="number"):
        trainer.step()
    trainer.fitness_fn = lambda m: torch.ones(3)
    with pytest.raises(ValueError, match="single number"):
        trainer.step()


def test_batched_fitness_with_wrong_shape_or_wrong_inputs():
    x, y = make_data()
    model = make_model()
    theta = params_of(model)
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=lambda m: m(x[:6]).mean(),
                             population_size=4, seed=0, batched=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"shape \(6, 4\).*K·b rows, member-major"):  # 6 rows for 4 members
        trainer.step()
    trainer.fitness_fn = lambda m: neg_mse_batched(x, y)(m)[:2]
    with pytest.raises(ValueError, match="one per member"):
        trainer.step()
    assert same(theta, params_of(model))


def test_batched_with_parameters_outside_the_model():
    model = make_model()
    stray = torch.nn.Parameter(torch.zeros(3))
    trainer = VanillaESTrainer([stray], model=model, fitness_fn=lambda m: torch.zeros(4), population_size=4,
                               batched=True)  # fmt: skip
    with pytest.raises(ValueError, match="not parameters of `model`"):
        trainer.step()


def test_nan_free_updates_even_with_constant_fitness():
    model = make_model()
    theta = params_of(model)
    trainer = EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=lambda m: 1.0, population_size=8, seed=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert same(theta, params_of(model))  # zero shaped fitness: no move


def test_overflowing_fitness_never_writes_non_finite_weights():
    model = make_model()
    theta = params_of(model)
    calls = {"n": 0}

    def huge(m):
        calls["n"] += 1
        return 1e308 * (1 if calls["n"] % 2 else -1)

    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=huge, population_size=8, seed=0,
                             fitness_shaping="raw", learning_rate=1e10)  # fmt: skip
    with pytest.raises(RuntimeError, match="not finite"):
        trainer.step()
    assert same(theta, params_of(model))
