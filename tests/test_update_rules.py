"""Update rules: any torch.optim optimizer applies ĝ (as .grad = −ĝ) on the trainer's own param groups."""

import functools
import io

import pytest
import torch
from conftest import make_data, make_model, neg_mse, params_of, same

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.updates.rules import ClipUp


def build(optimizer, model=None, **options):
    x, y = make_data()
    model = model if model is not None else make_model()
    settings = dict(population_size=8, learning_rate=0.01, sigma=0.1, rank=2, seed=0)
    settings.update(options)
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), optimizer=optimizer,
                             **settings)  # fmt: skip
    return model, trainer


def save_load(obj, weights_only=True):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=weights_only)


@pytest.mark.parametrize(
    "name, factory, options",
    [
        ("sgd", torch.optim.SGD, {}),
        ("sgd", torch.optim.SGD, dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
        ("adam", torch.optim.Adam, dict(betas=(0.8, 0.99))),
        ("adamw", torch.optim.AdamW, dict(weight_decay=0.1)),
        ("clipup", ClipUp, dict(momentum=0.9)),
    ],
)
def test_named_rules_are_the_torch_optimizers(name, factory, options):
    by_name, trainer = build(name, **options)
    by_class, other = build(factory, **options)
    trainer.train(3, verbose=False)
    other.train(3, verbose=False)
    assert same(params_of(by_name), params_of(by_class))


def test_plain_sgd_step_is_lr_times_the_estimate():
    # θ ← θ + lr·ĝ: the step is linear in lr, and the same estimate at lr and 2·lr.
    steps = []
    for lr in (0.01, 0.02):
        model, trainer = build("sgd", learning_rate=lr)
        theta = params_of(model)
        trainer.step()
        steps.append(torch.cat([(p - t).flatten() for p, t in zip(params_of(model), theta)]))
    torch.testing.assert_close(steps[1], 2 * steps[0], rtol=1e-4, atol=1e-7)


def test_any_torch_optimizer_class_learns():
    x, y = make_data()
    model, trainer = build(torch.optim.RMSprop, learning_rate=0.01, sigma=0.05, population_size=32)
    start = -neg_mse(x, y)(model)
    trainer.train(30, verbose=False)
    assert -neg_mse(x, y)(model) < 0.7 * start


def test_partial_and_trainer_keywords_configure_the_optimizer():
    _, trainer = build(functools.partial(torch.optim.SGD, momentum=0.9, nesterov=True))
    group = trainer.param_groups[0]
    assert group["momentum"] == 0.9 and group["nesterov"] and group["sigma"] == 0.1 and group["lr"] == 0.01
    _, trainer = build(torch.optim.SGD, momentum=0.5)  # a trainer keyword goes to the class
    assert trainer.param_groups[0]["momentum"] == 0.5
    _, trainer = build(torch.optim.AdamW)  # keywords left out: the class's own defaults
    assert trainer.param_groups[0]["weight_decay"] == 0.01
    trainer.step()
    assert set(trainer.state[trainer.param_groups[0]["params"][0]]) == {"step", "exp_avg", "exp_avg_sq"}


def test_scheduler_drives_the_inner_optimizer():
    # Zero lr after the first step: a scheduler writing group["lr"] must stop torch's Adam too.
    model, trainer = build(torch.optim.Adam, learning_rate=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(trainer, lambda step: 1.0 if step == 0 else 0.0)
    trainer.step()
    scheduler.step()
    theta = params_of(model)
    trainer.step()
    assert same(theta, params_of(model))


def test_per_group_rules():
    model = make_model()
    x, y = make_data()
    groups = [
        {"params": list(model.fc1.parameters()), "optimizer": torch.optim.Adam},
        {"params": [p for n, p in model.named_parameters() if not n.startswith("fc1")], "momentum": 0.9},
    ]
    trainer = EGGROLLTrainer(groups, model=model, fitness_fn=neg_mse(x, y), population_size=8, seed=0,
                             optimizer="sgd")  # fmt: skip
    trainer.step()
    first, rest = trainer.param_groups
    assert "exp_avg" in trainer.state[first["params"][0]]
    assert "momentum_buffer" in trainer.state[rest["params"][0]]


@pytest.mark.parametrize(
    "optimizer",
    [torch.optim.Adam, functools.partial(torch.optim.SGD, momentum=0.9), torch.optim.NAdam],
    ids=["Adam", "partial-SGD", "NAdam"],
)
def test_resume_with_an_optimizer_class_is_bit_identical(optimizer):
    def run(model, trainer, scheduler, generations):
        for _ in range(generations):
            trainer.step()
            scheduler.step()

    def make(seed):
        model, trainer = build(optimizer, seed=seed)
        return model, trainer, torch.optim.lr_scheduler.StepLR(trainer, step_size=2, gamma=0.5)

    straight = make(seed=3)
    run(*straight, 6)
    first = make(seed=3)
    run(*first, 3)
    checkpoint = save_load(  # weights_only: a class is saved by name
        {"model": first[0].state_dict(), "trainer": first[1].state_dict(), "scheduler": first[2].state_dict()}
    )
    resumed = make(seed=77)
    resumed[0].load_state_dict(checkpoint["model"])
    resumed[1].load_state_dict(checkpoint["trainer"])
    resumed[2].load_state_dict(checkpoint["scheduler"])
    run(*resumed, 3)
    assert same(params_of(straight[0]), params_of(resumed[0]))
    assert resumed[1].param_groups[0]["lr"] == straight[1].param_groups[0]["lr"] == 0.01 * 0.5**3


def test_a_checkpoint_of_another_optimizer_class_is_refused():
    model, trainer = build(torch.optim.Adam)
    trainer.step()
    state = trainer.state_dict()
    _, other = build(torch.optim.RMSprop)
    theta = params_of(model)
    with pytest.raises(ValueError, match="update rule"):
        other.load_state_dict(state)
    assert other.generation == 0 and same(theta, params_of(model))


def test_grad_is_left_as_the_user_had_it():
    model, trainer = build(torch.optim.Adam)
    assert all(p.grad is None for p in model.parameters())
    trainer.step()
    assert all(p.grad is None for p in model.parameters())  # −ĝ lived in .grad only during the step
    marks = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, mark in zip(model.parameters(), marks):
        p.grad = mark
    trainer.step()
    assert all(p.grad is mark for p, mark in zip(model.parameters(), marks))


def test_a_stale_grad_never_moves_a_parameter_without_an_estimate():
    # freeze_nonlora: biases have no estimate; a .grad left by a backward() must not move them.
    model, trainer = build(torch.optim.SGD, freeze_nonlora=True, learning_rate=1.0)
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    before = [b.detach().clone() for b in biases]
    for b in biases:
        b.grad = torch.ones_like(b)
    trainer.step()
    assert same(before, [b.detach() for b in biases])


@pytest.mark.parametrize(
    "optimizer, options, name",
    [
        (functools.partial(torch.optim.SGD, lr=0.1), {}, "learning_rate"),
        (torch.optim.Adam, dict(momentum=0.9), "momentum"),
        (functools.partial(torch.optim.Adam, maximize=True), {}, "maximize"),
        (lambda groups: object(), {}, "not a torch.optim.Optimizer"),
        (lambda groups: torch.optim.SGD([dict(g) for g in groups]), {}, "param groups"),
        ("lion", {}, "optimizer"),
        (42, {}, "optimizer"),
    ],
)
def test_bad_optimizers_are_value_errors(optimizer, options, name):
    with pytest.raises(ValueError, match=name):
        build(optimizer, **options)


def test_clipup_step_by_hand():
    # One step from v = 0: v = lr·g/‖g‖ (‖v‖ = lr ≤ max_speed), θ ← θ − v; then the speed limit binds.
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    q = torch.nn.Parameter(torch.tensor([0.0]))
    opt = ClipUp([p, q], lr=0.5, momentum=0.9, max_speed=0.6)
    p.grad, q.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 0.3, 2.0]))
    torch.testing.assert_close(q.detach(), torch.tensor([-0.4]))
    opt.step()  # v = 0.9·v + 0.5·ĝ = 0.95·(0.6, 0, 0.8): ‖v‖ = 0.95 > 0.6, clipped to 0.6
    torch.testing.assert_close(opt.state[p]["velocity"], torch.tensor([0.36, 0.0]))
    torch.testing.assert_close(q.detach(), torch.tensor([-0.4 - 0.48]))
