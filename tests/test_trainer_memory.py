"""What a trainer holds beyond the model: θ₀ on the CPU once a step is about to move the parameters, the best
member only with ``track_best`` (the default), and the update rule's moments — as ``trainer_memory()`` says."""

import pytest
import torch
from conftest import make_data, make_model, neg_mse

from eggroll_trainer import EGGROLLTrainer


def trainer(track_best=True, optimizer="sgd"):
    x, y = make_data()
    model = make_model()
    return EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8,
                          sigma=0.1, seed=0, track_best=track_best, optimizer=optimizer)  # fmt: skip


def parameter_bytes(t):
    return sum(p.numel() * p.element_size() for p in t.model.parameters())


def test_a_trainer_never_stepped_holds_nothing():
    assert trainer().trainer_memory() == {
        "best_member": 0,
        "initial_params": 0,
        "rule_state": 0,
        "master_params": 0,
    }


def test_after_a_step_it_holds_theta0_and_the_best_member_and_the_moments():
    t = trainer(optimizer="adam")
    t.step()
    held = t.trainer_memory()
    assert held["best_member"] == held["initial_params"] == parameter_bytes(t)
    assert held["rule_state"] >= 2 * parameter_bytes(t)  # Adam: two moments per parameter


def test_without_best_tracking_no_best_member_is_kept_or_returned():
    t = trainer(track_best=False)
    t.train(3, verbose=False)
    assert t.trainer_memory()["best_member"] == 0 and t.best_fitness is None
    assert t.state_dict()["es"]["best_params"] is None
    with pytest.raises(ValueError, match="track_best=False"):
        t.get_best_model()


def test_reset_restores_theta0_from_its_cpu_copy_and_drops_it():
    t = trainer()
    theta0 = t.current_params
    t.train(2, verbose=False)
    assert not torch.equal(t.current_params, theta0)
    t.reset()
    assert torch.equal(t.current_params, theta0) and t.generation == 0
    assert t.trainer_memory() == {"best_member": 0, "initial_params": 0, "rule_state": 0, "master_params": 0}


def test_device_is_where_the_parameters_are():  # eggroll-trainer 0.1.0's flat hooks read it
    t = trainer()
    assert t.device == next(t.model.parameters()).device
