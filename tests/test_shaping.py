"""Fitness shaping: pure functions on tiny hand-computed arrays, plus properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from eggroll_trainer import VanillaESTrainer, centered_rank, elite_pairs, group_normalize, raw, zscore
from eggroll_trainer.shaping import clean_scores, finite_or_worst, resolve_shaping, shape_fitness

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_zscore_by_hand():
    out = zscore(T(1.0, 2.0, 3.0))
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(out, T(-1 / s, 0.0, 1 / s), atol=1e-6, rtol=0)


def test_centered_rank_by_hand():
    torch.testing.assert_close(centered_rank(T(10.0, -3.0, 7.0)), T(0.5, -0.5, 0.0))
    # tied scores share their average rank: a tie carries no weight between its members
    torch.testing.assert_close(centered_rank(T(1.0, 1.0)), T(0.0, 0.0))
    torch.testing.assert_close(centered_rank(T(2.0, 0.0, 2.0, 5.0, 2.0)), T(0.0, -0.5, 0.0, 0.5, 0.0))
    torch.testing.assert_close(centered_rank(T(1.0, 1.0, 3.0, 3.0)), T(-1 / 3, -1 / 3, 1 / 3, 1 / 3))


def test_raw_is_identity():
    torch.testing.assert_close(raw(T(3.0, -1.0)), T(3.0, -1.0))


def test_group_normalize_removes_group_offsets():
    scores = T(1.0, 2.0, 11.0, 12.0)  # two groups with very different baselines
    out = group_normalize(scores, 2)
    std = scores.std(unbiased=False).item()
    torch.testing.assert_close(out, T(-0.5, 0.5, -0.5, 0.5) / std, atol=1e-6, rtol=0)


def test_nan_and_inf_rank_worst():
    clean, finite = finite_or_worst(T(1.0, float("nan"), 3.0, float("inf"), float("-inf")))
    assert finite.tolist() == [True, False, True, False, False]
    assert clean[1] < 1.0 and clean[3] < 1.0 and clean[4] < 1.0
    ranks = centered_rank(clean)
    assert ranks[2] == 0.5 and ranks[0] > ranks[1]


def test_clean_scores_is_the_input_when_finite_and_ranks_non_finite_worst():
    scores = T(1.0, 2.0, 3.0)
    assert clean_scores(scores) is scores  # nothing to replace: no copy
    dirty = T(1.0, float("nan"), 3.0, float("-inf"))
    torch.testing.assert_close(clean_scores(dirty), finite_or_worst(dirty)[0])
    huge = torch.tensor([1e308, 1e308, -1.0], dtype=torch.float64)  # finite, but the sum overflows
    assert torch.equal(clean_scores(huge), huge)


def test_zscore_matches_the_two_pass_formula():
    scores = torch.tensor([3.0, -1.0, 7.5, 0.25, 2.0], dtype=torch.float64)
    centered = scores - scores.mean()
    torch.testing.assert_close(zscore(scores), centered / (centered.pow(2).mean().sqrt() + 1e-8))
    assert torch.equal(zscore(torch.full((6,), 0.1)), torch.zeros(6))  # equal up to rounding: zeros


def test_unknown_shaping_name_is_an_error():
    with pytest.raises(ValueError, match="fitness_shaping"):
        resolve_shaping("softmax")


def test_callable_shaping_and_wrong_shape():
    assert resolve_shaping(torch.tanh) is torch.tanh
    with pytest.raises(ValueError, match="shape"):
        shape_fitness(T(1.0, 2.0), lambda s: s.sum())


finite_floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite_floats, min_size=2, max_size=40))
def test_shapings_preserve_order(values):
    scores = T(*values)
    for fn in (zscore, centered_rank):
        out = fn(scores)
        assert out.shape == scores.shape
        i, j = torch.argmax(scores), torch.argmin(scores)
        if scores[i] > scores[j]:
            assert out[i] > out[j]


@settings(max_examples=60, deadline=None)
@given(st.lists(finite_floats, min_size=2, max_size=40))
def test_centered_rank_is_bounded_and_centered(values):
    out = centered_rank(T(*values))
    assert out.min() >= -0.5 and out.max() <= 0.5
    assert abs(out.sum().item()) < 1e-9


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.data())
def test_group_normalize_zero_mean_per_group(groups, size, data):
    values = data.draw(st.lists(finite_floats, min_size=groups * size, max_size=groups * size))
    out = group_normalize(T(*values), size).view(groups, size)
    assert torch.allclose(out.mean(dim=1), torch.zeros(groups, dtype=torch.float64), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(finite_floats, st.just(float("nan")), st.just(float("-inf"))), min_size=2, max_size=30)
)
def test_non_finite_never_outranks_finite(values):
    scores = T(*values)
    finite = torch.isfinite(scores)
    if not finite.any():
        return
    clean, _ = finite_or_worst(scores)
    assert torch.isfinite(clean).all()
    if (~finite).any():
        assert clean[~finite].max() < clean[finite].min()


# ------------------------------------------------------------------------- ARS top-b directions
NAN = float("nan")


def test_elite_pairs_by_hand():
    # pairs (1, 5), (2, 0), (4, 3), (NaN, 1): best members 5, 2, 4, 1; k = 2 keeps pairs 0 and 2.
    out = elite_pairs(T(1.0, 5.0, 2.0, 0.0, 4.0, 3.0, NAN, 1.0), 2)
    kept = T(1.0, 5.0, 4.0, 3.0)  # mean 3.25, population std √2.1875; times N / 2k = 2
    expected = (kept - 3.25) / math.sqrt(2.1875) * 2
    torch.testing.assert_close(out, T(*expected[:2], 0.0, 0.0, *expected[2:], 0.0, 0.0), atol=1e-6, rtol=0)


def test_elite_pairs_nan_ranks_worst_and_ties_go_to_the_first_pair():
    # (NaN, NaN) is the worst pair whatever k; (NaN, 9) ranks by its finite member.
    out = elite_pairs(T(NAN, NAN, 1.0, 2.0, 0.0, 0.0), 2)
    assert out[:2].tolist() == [0.0, 0.0] and out[2:].ne(0).all()
    out = elite_pairs(T(NAN, 9.0, 1.0, 2.0), 1)
    # finite 1, 2, 9: NaN becomes 1 − (1 + 8) = −8; kept (−8, 9): centred ±8.5, std 8.5, times N / 2k = 2
    torch.testing.assert_close(out, T(-2.0, 2.0, 0.0, 0.0), atol=1e-6, rtol=0)
    assert elite_pairs(T(3.0, 1.0, 1.0, 3.0), 1)[2:].tolist() == [0.0, 0.0]  # a tie: pair 0 wins


def test_elite_pairs_with_every_pair_is_zscore():
    scores = T(1.0, 5.0, 2.0, 0.0, 4.0, 3.0, 7.0, 1.0)
    torch.testing.assert_close(elite_pairs(zscore(scores), 4), zscore(scores))
    torch.testing.assert_close(elite_pairs(raw(scores), 4), zscore(scores))


def test_elite_pairs_composes_with_shaping_and_groups():
    scores = T(1.0, 5.0, 2.0, 0.0, 4.0, 3.0, 7.0, 1.0)
    # zscore is affine: the same weights as raw; ranks keep the kept members' ranks in the population.
    torch.testing.assert_close(
        shape_fitness(scores, zscore, elite_k=2), shape_fitness(scores, raw, elite_k=2)
    )
    ranked = shape_fitness(scores, centered_rank, elite_k=2)  # pairs 3 (7, 1) and 0 (1, 5) kept
    kept = centered_rank(scores)[[0, 1, 6, 7]]
    torch.testing.assert_close(ranked[[0, 1, 6, 7]], (kept - kept.mean()) / kept.std(unbiased=False) * 2)
    assert ranked[2:6].tolist() == [0.0] * 4
    # after group normalisation pairs rank by their group-relative weight: group 0 − 2 = (−1, 3, 0, −2),
    # group 1 − 13.75 = (0.25, −0.75, 3.25, −2.75): pair 3 (3.25) beats pair 0 (3), though 17 ≫ 5
    grouped = shape_fitness(T(1.0, 5.0, 2.0, 0.0, 14.0, 13.0, 17.0, 11.0), raw, group_size=4, elite_k=1)
    assert grouped.ne(0).tolist() == [False] * 6 + [True] * 2


def test_elite_pairs_bad_k():
    for k, n in ((0, 4), (3, 4), (1, 3)):
        with pytest.raises(ValueError, match="elite_k"):
            elite_pairs(torch.zeros(n), k)


def trainer_step(elite_k: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One SGD step on f(θ) = c·θ; returns θ before, θ after and every member's θ + σ s E."""
    model = nn.Linear(3, 1, bias=False)
    nn.init.zeros_(model.weight)
    c = torch.tensor([1.0, -2.0, 0.5])
    members = []

    def fitness(m):
        members.append(m.weight.detach().flatten().clone())
        return float(m.weight.flatten() @ c)

    trainer = VanillaESTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=8,
                               learning_rate=0.5, sigma=0.1, seed=3, fitness_shaping="raw", elite_k=elite_k)  # fmt: skip
    trainer.step()
    return torch.zeros(3), model.weight.detach().flatten(), members


def test_trainer_elite_k_keeps_only_the_best_pairs():
    theta, after, members = trainer_step(elite_k=1)
    noise = [(members[2 * j] - theta) / 0.1 for j in range(4)]  # E_j of each pair
    scores = T(*[float(m @ torch.tensor([1.0, -2.0, 0.5])) for m in members])
    best = int(scores.view(4, 2).max(dim=1).values.argmax())
    weights = elite_pairs(scores, 1).float()
    expected = (
        0.5 / (8 * 0.1) * sum(weights[2 * j] * noise[j] - weights[2 * j + 1] * noise[j] for j in range(4))
    )
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
    # only the best pair moved θ: the step is parallel to that pair's noise
    cosine = torch.nn.functional.cosine_similarity(after, noise[best], dim=0).abs()
    assert cosine > 1 - 1e-5
    _, every_pair, _ = trainer_step(elite_k=0)
    assert not torch.allclose(every_pair, after)


def test_trainer_elite_k_bad_values():
    model = nn.Linear(2, 1)
    make = lambda **kw: VanillaESTrainer(model.parameters(), model=model, fitness_fn=lambda m: 0.0, **kw)  # noqa: E731
    for kw in (dict(population_size=8, elite_k=5), dict(population_size=8, elite_k=-1),
               dict(population_size=8, elite_k=2, antithetic=False), dict(population_size=7, elite_k=2),
               dict(population_size=8, elite_k=1.5)):  # fmt: skip
        with pytest.raises(ValueError, match="elite_k"):
            make(**kw)


@pytest.mark.parametrize("extra", [{}, dict(group_size=4), dict(elite_k=2)], ids=["plain", "groups", "elite"])
@pytest.mark.parametrize("rule", ["sgd", "adam", "adamw", "clipup"])
@pytest.mark.parametrize("shaping", ["zscore", "centered_rank", "raw"])
def test_constant_fitness_moves_nothing(shaping, rule, extra):
    """Equal scores carry no information: under every shaping and update rule θ stays exactly where it is."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = VanillaESTrainer(model.parameters(), model=model, fitness_fn=lambda m: 1.0, population_size=8,
                               learning_rate=0.01, sigma=0.1, seed=0, fitness_shaping=shaping, optimizer=rule,
                               **extra)  # fmt: skip
    trainer.train(2, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
