"""Fitness functions that give each member a row of P scores (one per prompt): the ``(K, P)`` contract.

The trainer gathers the generation's ``(N, P)`` matrix; a shaping callable sees it whole, a built-in shaping its
mean over P; metrics and the best member use the mean. Shaping is a pure function of the matrix, so chunks,
``evaluate_fitness()`` between steps and an exception mid-generation change nothing.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_data, make_model, params_of

from eggroll_trainer import EGGROLLTrainer, current_population, zscore
from eggroll_trainer.shaping import centered_rank, mirrored_sign, prompt_baseline

X, Y = make_data(rows=8)
N = 6


class RowFitness:
    """−(squared error) on each of the 8 rows: ``(K, 8)`` batched, ``(1, 8)`` sequentially; keeps what it returned."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.returned: list[torch.Tensor] = []
        self.fail_at = fail_at

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        if self.fail_at is not None and len(self.returned) == self.fail_at:
            raise RuntimeError("reward server went away")
        info = current_population()
        if info is None:
            rows = -((model(X) - Y) ** 2).view(1, -1)  # (1, P)
        else:
            rows = -((model(X.expand(info.size, *X.shape)) - Y) ** 2).squeeze(-1)  # (K, P)
        self.returned.append(rows.detach().double())
        return rows


def trainer_for(model, fitness, shaping, **options) -> EGGROLLTrainer:
    return EGGROLLTrainer(
        model.parameters(), model, fitness, population_size=N, learning_rate=0.05, sigma=0.1, rank=1, seed=7,
        fitness_shaping=shaping, **options,
    )  # fmt: skip


@pytest.mark.parametrize(
    "options", [dict(batched=True), dict(batched=True, chunk_size=4), dict(batched=False)]
)
def test_matrix_fitness_gives_the_update_of_the_hand_shaped_vector(options) -> None:
    """A (K, P) fitness shaped by ``prompt_baseline`` moves θ exactly as an (N,) fitness whose shaping hands
    the trainer prompt_baseline(matrix), computed by hand from the same matrix."""
    fitness = RowFitness()
    model = make_model()
    metrics = trainer_for(model, fitness, prompt_baseline, **options).step()
    matrix = torch.cat(fitness.returned)  # (N, P), member order
    assert matrix.shape == (N, 8)

    seen: list[torch.Tensor] = []

    def by_hand(means: torch.Tensor) -> torch.Tensor:
        seen.append(means)
        return prompt_baseline(matrix)

    reference = make_model()
    means = lambda m: (-((m(X) - Y) ** 2)).mean().item()  # noqa: E731 — the (N,) fitness: the mean over rows
    ref_metrics = trainer_for(reference, means, by_hand).step()
    torch.testing.assert_close(seen[0], matrix.mean(dim=1))
    for a, b in zip(params_of(model), params_of(reference)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert metrics["mean_fitness"] == pytest.approx(ref_metrics["mean_fitness"])
    assert metrics["best_fitness"] == pytest.approx(float(matrix.mean(dim=1).max()))


@pytest.mark.parametrize("shaping", ["zscore", "centered_rank", "raw"])
def test_builtin_shapings_apply_to_the_mean_over_prompts(shaping) -> None:
    model, reference = make_model(), make_model()
    trainer_for(model, RowFitness(), shaping, batched=True).step()

    def mean_rows(m):
        k = current_population().size
        return (-((m(X.expand(k, *X.shape)) - Y) ** 2)).mean(dim=(1, 2))  # (K,)

    trainer_for(reference, mean_rows, shaping, batched=True).step()
    for a, b in zip(params_of(model), params_of(reference)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batched", [True, False])
def test_evaluate_fitness_between_steps_changes_nothing(batched) -> None:
    """Issue 24 #5: the per-prompt shaping used to keep state that ``evaluate_fitness`` put out of step."""
    model, reference = make_model(), make_model()
    trainer = trainer_for(model, RowFitness(), prompt_baseline, batched=batched)
    plain = trainer_for(reference, RowFitness(), prompt_baseline, batched=batched)
    trainer.step()
    plain.step()
    center = trainer.evaluate_fitness(model)
    assert center == pytest.approx((-((model(X) - Y) ** 2)).mean().item())  # a (1, P) row gives its mean
    trainer.step()
    plain.step()
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), params_of(reference)))


@pytest.mark.parametrize("options", [dict(batched=True, chunk_size=2), dict(batched=False)])
def test_an_exception_mid_generation_leaves_theta_and_the_next_step_intact(options) -> None:
    """Issue 24 #5: a fitness that raises after some members were scored; θ is unchanged and the next
    generation runs as if nothing had happened."""
    model, reference = make_model(), make_model()
    failing = RowFitness(fail_at=2)
    trainer = trainer_for(model, failing, prompt_baseline, **options)
    before = params_of(model)
    with pytest.raises(RuntimeError, match="went away"):
        trainer.step()
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))
    failing.fail_at = None
    trainer.step()
    trainer_for(reference, RowFitness(), prompt_baseline, **options).step()
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), params_of(reference)))


@pytest.mark.filterwarnings("ignore:batched evaluation")  # these fitnesses never call the model
def test_rows_of_different_lengths_raise() -> None:
    calls = []

    def ragged(model):
        calls.append(None)
        return torch.zeros(current_population().size, 3 if len(calls) == 1 else 4)

    with pytest.raises(ValueError, match="same number of scores"):
        trainer_for(make_model(), ragged, prompt_baseline, batched=True, chunk_size=2).step()
    with pytest.raises(ValueError, match=r"\(2, P\)"):
        trainer_for(
            make_model(), lambda m: torch.zeros(2, 3, 1), prompt_baseline, batched=True, chunk_size=2
        ).step()


def test_a_shaping_that_returns_the_wrong_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"expected \(6,\)"):
        trainer_for(make_model(), RowFitness(), lambda s: s, batched=True).step()


# ------------------------------------------------------------------ the shapings for sparse rewards
def test_centered_rank_averages_ties_by_hand() -> None:
    t = torch.tensor([1.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(centered_rank(t), torch.tensor([0.0, 0.0, -0.5, 0.5], dtype=torch.float64))
    assert torch.all(centered_rank(torch.ones(5)) == 0)


def test_prompt_baseline_nonfinite_ranks_worst_within_its_prompt() -> None:
    rewards = torch.tensor([[1.0, 0.0], [float("nan"), 1.0], [0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    shaped = prompt_baseline(rewards)
    assert torch.isfinite(shaped).all() and shaped[1] < shaped[3]


def test_mirrored_sign_by_hand() -> None:
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # pair means: (0.5, 0), (0.5, 0.5), (1, 0)
    torch.testing.assert_close(mirrored_sign(scores), torch.tensor([1.0, -1.0, 0.0, 0.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="even"):
        mirrored_sign(torch.zeros(3))


@pytest.mark.filterwarnings("ignore:batched evaluation")
@pytest.mark.parametrize("shaping", [prompt_baseline, mirrored_sign, lambda s: prompt_baseline(s, "rank")])
def test_constant_rewards_move_nothing(shaping) -> None:
    model = make_model()
    before = params_of(model)
    trainer_for(model, lambda m: torch.ones(current_population().size, 4), shaping, batched=True).step()
    assert all(torch.equal(a, b) for a, b in zip(params_of(model), before))


def test_prompt_baseline_of_one_column_is_the_zscore() -> None:
    scores = torch.tensor([3.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(prompt_baseline(scores.view(4, 1)), zscore(scores))
