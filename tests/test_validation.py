"""eggroll_trainer.validation: every bad argument raises ValueError naming it."""

import math

import pytest
import torch
from torch import nn

from eggroll_trainer.validation import (
    check_arguments,
    check_groups,
    check_params,
    is_int,
    is_real,
    resolve_lr,
)

GOOD = dict(
    model=nn.Linear(2, 1), fitness_fn=None, population_size=8, lr=0.01, sigma=0.1, seed=None, group_size=0,
    noise_reuse=0, chunk_size=None, batch_dim=0, noise_table_size=None, elite_k=0, antithetic=True,
)  # fmt: skip


def test_good_arguments_pass():
    check_arguments(**GOOD)
    check_arguments(**{**GOOD, "group_size": 4, "elite_k": 4, "chunk_size": 3, "seed": 5, "batch_dim": 1})


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"model": "not a module"}, "model"),
        ({"fitness_fn": 3}, "fitness_fn"),
        ({"population_size": 0}, "population_size"),
        ({"population_size": True}, "population_size"),
        ({"population_size": 8.0}, "population_size"),
        ({"lr": -1.0}, "learning rate"),
        ({"lr": math.nan}, "learning rate"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": math.inf}, "sigma"),
        ({"seed": 1.5}, "seed"),
        ({"group_size": -1}, "group_size"),
        ({"group_size": 3}, "group_size"),  # does not divide 8
        ({"noise_reuse": -2}, "noise_reuse"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"batch_dim": 2}, "batch_dim"),
        ({"noise_table_size": 1}, "noise_table_size"),
        ({"elite_k": 5}, "elite_k"),  # > N/2
        ({"elite_k": 2, "antithetic": False}, "elite_k"),
        ({"elite_k": 1, "population_size": 7}, "elite_k"),  # odd N
    ],
)
def test_each_bad_argument_is_named(overrides, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        check_arguments(**{**GOOD, **overrides})


def test_lr_alias():
    assert resolve_lr(0.01, None) == 0.01
    assert resolve_lr(0.01, 0.5) == 0.5  # learning_rate left at its default
    assert resolve_lr(0.5, 0.5) == 0.5
    with pytest.raises(ValueError, match="Invalid lr: 0.2 conflicts with learning_rate=0.5"):
        resolve_lr(0.5, 0.2)


def test_groups_and_params():
    check_groups([{"sigma": 0.1, "lr": 0.0}])
    with pytest.raises(ValueError, match="Invalid sigma: -0.1"):
        check_groups([{"sigma": 0.1, "lr": 0.1}, {"sigma": -0.1, "lr": 0.1}])
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        check_groups([{"sigma": 0.1, "lr": -1}])
    frozen = torch.zeros(2, requires_grad=False)
    check_params([frozen, torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="no parameters"):
        check_params([])
    with pytest.raises(ValueError, match="every parameter has requires_grad=False"):
        check_params([frozen])


def test_numbers_exclude_bool():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_real(3) and is_real(0.5) and not is_real(False) and not is_real(math.nan) and not is_real("1")
