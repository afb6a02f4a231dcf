"""The optimizer contract: estimates, convergence, closures, schedulers, best member, Ctrl-C."""

import io
import math

import pytest
import torch
from conftest import Recorder, make_data, make_model, neg_mse, neg_mse_batched, params_of, same
from torch import nn

from eggroll_trainer import EGGROLLTrainer, ESTrainer, VanillaESTrainer, current_population


def linear_problem(n_in=12, n_out=10, rows=5, seed=0):
    """Fitness linear in θ: f = Σ c ⊙ (x Wᵀ + b), so ∇_W f = cᵀx and ∇_b f = Σ_rows c."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n_in, generator=g)
    c = torch.randn(rows, n_out, generator=g)
    model = nn.Linear(n_in, n_out)
    true_grad = torch.cat([(c.T @ x).flatten(), c.sum(0)])

    def fitness(model):
        k = current_population().size
        return (model(x.expand(k, *x.shape)) * c).sum(dim=(1, 2))

    return model, fitness, true_grad


def update_direction(trainer, model):
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return after - before


@pytest.mark.parametrize("rank", [1, 4])
def test_estimate_points_along_the_true_gradient(rank):
    model, fitness, true_grad = linear_problem()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=4096,
                             learning_rate=1e-3, sigma=0.01, rank=rank, seed=0, batched=True)  # fmt: skip
    step = update_direction(trainer, model)
    cosine = torch.nn.functional.cosine_similarity(step, true_grad, dim=0).item()
    assert cosine > 0.8, cosine


def test_vanilla_estimate_points_along_the_true_gradient():
    model, fitness, true_grad = linear_problem()
    trainer = VanillaESTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=4096,
                               learning_rate=1e-3, sigma=0.01, seed=0, batched=True)  # fmt: skip
    cosine = torch.nn.functional.cosine_similarity(update_direction(trainer, model), true_grad, dim=0)
    assert cosine > 0.8


def test_raw_shaping_recovers_the_gradient_scale():
    # With raw fitness and SGD, E[ĝ] = ∇f for linear f: the step is lr·∇f up to sampling noise.
    model, fitness, true_grad = linear_problem()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=8192,
                             learning_rate=1.0, sigma=0.01, rank=2, seed=1, batched=True,
                             fitness_shaping="raw")  # fmt: skip
    step = update_direction(trainer, model)
    ratio = (step @ true_grad / true_grad.norm() ** 2).item()
    assert 0.85 < ratio < 1.15, ratio


@pytest.mark.parametrize("batched", [False, True])
def test_converges_on_a_small_regression(batched):
    x, y = make_data(rows=32)
    model = make_model()
    fitness = neg_mse_batched(x, y) if batched else neg_mse(x, y)
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=64,
                             learning_rate=0.03, sigma=0.05, rank=2, seed=0, batched=batched,
                             optimizer="adam")  # fmt: skip
    start = -neg_mse(x, y)(model)
    trainer.train(60, verbose=False)
    end = -neg_mse(x, y)(model)
    assert end < 0.3 * start, (start, end)
    assert trainer.generation == 60 and len(trainer.fitness_history) == 60


def test_generation_counts_steps_and_train_calls():
    x, y = make_data()
    model = make_model()
    trainer = EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8, seed=0
    )
    trainer.step()
    result = trainer.train(5, verbose=False)
    assert trainer.generation == 6 and result["generation"] == 6
    assert len(result["fitness_history"]) == 6
    assert set(result) >= {"generation", "best_fitness", "fitness_history"}


def test_step_metrics():
    x, y = make_data()
    model = make_model()
    trainer = EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8, seed=0
    )
    scores = []
    trainer.fitness_fn = lambda m: scores.append(neg_mse(x, y)(m)) or scores[-1]
    metrics = trainer.step()
    assert set(metrics) >= {"generation", "mean_fitness", "best_fitness", "std_fitness"}
    assert metrics["best_fitness"] >= metrics["mean_fitness"]
    values = torch.tensor(scores, dtype=torch.float64)  # every member's score, as the trainer saw them
    assert metrics["mean_fitness"] == pytest.approx(float(values.mean()), rel=1e-12)
    assert metrics["best_fitness"] == float(values.max())
    assert metrics["std_fitness"] == pytest.approx(float(values.std(unbiased=False)), rel=1e-9)


def test_closure_in_a_plain_pytorch_loop():
    x, y = make_data(rows=32)
    model = make_model()
    opt = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=None, population_size=32,
                         learning_rate=0.03, sigma=0.05, rank=2, seed=0, optimizer="adam")  # fmt: skip
    loss_fn = nn.MSELoss()
    first = None
    for _ in range(40):
        opt.zero_grad()

        def closure():
            loss = loss_fn(model(x), y)
            loss.backward()  # a closure written for a gradient optimizer still works
            return loss

        metrics = opt.step(closure)
        first = metrics["loss"] if first is None else first
    assert loss_fn(model(x), y).item() < 0.5 * first


def test_batched_closure_returns_one_loss_per_member():
    x, y = make_data(rows=16)
    model = make_model()
    opt = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=None, population_size=16,
                         learning_rate=0.02, sigma=0.05, seed=0, batched=True)  # fmt: skip

    def closure():
        k = current_population().size
        return ((model(x.expand(k, *x.shape)) - y) ** 2).mean(dim=(1, 2))

    metrics = opt.step(closure)
    assert math.isfinite(metrics["loss"])


def test_step_without_closure_or_fitness_is_an_error():
    model = make_model()
    opt = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=None, population_size=4, seed=0)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def test_fitness_fn_is_assignable():
    x, y = make_data()
    model = make_model()
    trainer = EGGROLLTrainer(
        model.parameters(), model=model, fitness_fn=lambda m: 0.0, population_size=4, seed=0
    )
    trainer.fitness_fn = neg_mse(x, y)
    assert trainer.step()["mean_fitness"] < 0


def test_schedulers_drive_lr_and_sigma_lives_in_param_groups():
    x, y = make_data()
    model = make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8,
                             learning_rate=0.1, sigma=0.05, seed=0)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.StepLR(trainer, step_size=1, gamma=0.5)
    lrs = []
    for _ in range(3):
        trainer.step()
        scheduler.step()
        lrs.append(trainer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.05, 0.025, 0.0125])
    assert trainer.learning_rate == pytest.approx(0.0125)
    assert trainer.param_groups[0]["sigma"] == 0.05


def test_lr_scales_the_sgd_step_exactly():
    x, y = make_data()
    steps = []
    for lr in (0.01, 0.02):
        model = make_model()
        theta = params_of(model)
        trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8,
                                 learning_rate=lr, seed=0)  # fmt: skip
        trainer.step()
        steps.append(torch.cat([(p - t).flatten() for p, t in zip(params_of(model), theta)]))
    torch.testing.assert_close(steps[1], 2 * steps[0], rtol=1e-4, atol=1e-7)


def test_per_group_hyperparameters_are_honoured():
    x, y = make_data()
    model = make_model()
    theta = params_of(model)
    groups = [
        {"params": list(model.fc1.parameters()), "lr": 0.0},
        {"params": [p for n, p in model.named_parameters() if not n.startswith("fc1")]},
    ]
    trainer = EGGROLLTrainer(groups, model=model, fitness_fn=neg_mse(x, y), population_size=8,
                             learning_rate=0.05, seed=0)  # fmt: skip
    trainer.step()
    after = params_of(model)
    assert same(theta[:2], after[:2])  # fc1 (lr 0) unchanged
    assert not same(theta[2:], after[2:])


def test_lr_alias():
    model = make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=lambda m: 0.0, lr=0.3, seed=0)
    assert trainer.param_groups[0]["lr"] == 0.3 and trainer.learning_rate == 0.3


def test_best_model_holds_exactly_the_best_evaluated_member():
    x, y = make_data()
    fitness = neg_mse(x, y)
    seen = []

    def recording(model):
        seen.append(fitness(model))
        return seen[-1]

    model = make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=recording, population_size=16,
                             learning_rate=0.05, sigma=0.1, rank=2, seed=0)  # fmt: skip
    trainer.train(4, verbose=False)
    assert trainer.best_fitness == max(seen)
    best = trainer.get_best_model()
    assert fitness(best) == trainer.best_fitness
    assert best is not model and fitness(model) != trainer.best_fitness  # the live model is the center


def test_best_model_in_batched_mode_matches_within_float_tolerance():
    x, y = make_data()
    model = make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse_batched(x, y), population_size=16,
                             learning_rate=0.05, sigma=0.1, rank=2, seed=0, batched=True)  # fmt: skip
    trainer.train(3, verbose=False)
    assert neg_mse(x, y)(trainer.get_best_model()) == pytest.approx(trainer.best_fitness, rel=1e-4)


def test_reset_restores_the_start():
    x, y = make_data()
    model = make_model()
    theta = params_of(model)
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8,
                             seed=0, optimizer="adam")  # fmt: skip
    trainer.train(2, verbose=False)
    trainer.reset()
    assert same(theta, params_of(model)) and trainer.generation == 0
    assert trainer.best_fitness is None and trainer.fitness_history == [] and len(trainer.state) == 0


def test_evaluate_fitness_on_the_center():
    x, y = make_data()
    model = make_model()
    seq = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=4, seed=0)
    bat = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse_batched(x, y), population_size=4,
                         seed=0, batched=True)  # fmt: skip
    assert seq.evaluate_fitness(model) == pytest.approx(bat.evaluate_fitness(model), rel=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "clipup"])
def test_update_rules_learn(optimizer):
    x, y = make_data()
    model = make_model()
    options = dict(momentum=0.9) if optimizer in ("sgd", "clipup") else {}
    lr = {"sgd": 0.002, "adam": 0.03, "adamw": 0.03, "clipup": 0.1}[optimizer]
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=32,
                             learning_rate=lr, sigma=0.05, rank=2, seed=0, optimizer=optimizer,
                             **options)  # fmt: skip
    start = -neg_mse(x, y)(model)
    trainer.train(30, verbose=False)
    assert -neg_mse(x, y)(model) < 0.7 * start


def test_ctrl_c_inside_train_keeps_the_last_completed_generation():
    x, y = make_data()
    fitness = neg_mse(x, y)
    calls = {"n": 0}

    def interrupting(model):
        calls["n"] += 1
        if calls["n"] == 2 * 8 + 5:  # generation 3, member 5
            raise KeyboardInterrupt
        return fitness(model)

    model, twin = make_model(), make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=interrupting, population_size=8,
                             sigma=0.1, seed=0, optimizer="adam")  # fmt: skip
    reference = EGGROLLTrainer(twin.parameters(), model=twin, fitness_fn=fitness, population_size=8,
                               sigma=0.1, seed=0, optimizer="adam")  # fmt: skip
    result = trainer.train(5, verbose=False)
    reference.train(2, verbose=False)
    assert result["interrupted"] and trainer.generation == 2
    assert same(params_of(model), params_of(twin))


class FlatES(ESTrainer):
    """The custom-algorithm example from eggroll-trainer 0.1.0's README, verbatim."""

    def sample_perturbations(self, population_size):
        param_dim = self.current_params.shape[0]
        return torch.randn(population_size, param_dim, device=self.device)

    def compute_update(self, perturbations, fitnesses):
        weights = (fitnesses - fitnesses.mean()) / fitnesses.std()
        return (weights[:, None] * perturbations).mean(dim=0)


def test_custom_flat_hook_subclass_trains_and_restores_theta():
    x, y = make_data()
    model = make_model()
    rec = Recorder(neg_mse(x, y))
    trainer = FlatES(model.parameters(), model=model, fitness_fn=rec, population_size=32,
                     learning_rate=0.05, sigma=0.05)  # fmt: skip
    theta = trainer.current_params
    trainer.step()
    # members are θ + σ·ε_i around the same θ: perturbations never accumulate
    first = torch.cat([v.flatten() for v in rec.snapshots[0].values()])
    last = torch.cat([v.flatten() for v in rec.snapshots[-1].values()])
    assert (first - theta).abs().max() < 0.5 and (last - theta).abs().max() < 0.5
    start = -neg_mse(x, y)(model)
    trainer.train(40, verbose=False)
    assert -neg_mse(x, y)(model) < start
    assert trainer.current_params.shape == theta.shape


def test_state_dict_round_trips_through_torch_save():
    x, y = make_data()
    model = make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8,
                             seed=0, optimizer="adam")  # fmt: skip
    trainer.step()
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    assert state["es"]["generation"] == 1 and state["es"]["seed"] == 0
