"""eggroll_trainer.updates.clipup: ClipUp keeps its public name (update_rules), which checkpoints record."""

import functools
import pickle

import torch

from eggroll_trainer.updates.rules import ClipUp, describe_rule


def test_public_name_is_stable_for_checkpoints():
    assert describe_rule(ClipUp) == "eggroll_trainer.updates.rules.ClipUp"
    assert describe_rule(functools.partial(ClipUp, momentum=0.5)).startswith(
        "functools.partial(eggroll_trainer.updates.rules.ClipUp, "
    )
    assert pickle.loads(pickle.dumps(ClipUp)) is ClipUp


def test_step_length_is_bounded_by_max_speed():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = ClipUp([p], lr=0.1, momentum=0.9, max_speed=0.15)
    for _ in range(5):
        before = p.detach().clone()
        p.grad = torch.tensor([100.0, 0.0, 0.0])
        opt.step()
        assert torch.linalg.vector_norm(p.detach() - before) <= 0.15 + 1e-7
