"""Fitness shaping: pure functions on tiny hand-computed arrays, plus properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eggroll_trainer import centered_rank, group_normalize, raw, zscore
from eggroll_trainer.shaping import finite_or_worst, resolve_shaping, shape_fitness

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_zscore_by_hand():
    out = zscore(T(1.0, 2.0, 3.0))
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(out, T(-1 / s, 0.0, 1 / s), atol=1e-6, rtol=0)


def test_centered_rank_by_hand():
    torch.testing.assert_close(centered_rank(T(10.0, -3.0, 7.0)), T(0.5, -0.5, 0.0))
    # ties broken by member index, still in [-0.5, 0.5]
    torch.testing.assert_close(centered_rank(T(1.0, 1.0)), T(-0.5, 0.5))


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
@given(st.lists(st.one_of(finite_floats, st.just(float("nan")), st.just(float("-inf"))), min_size=2, max_size=30))
def test_non_finite_never_outranks_finite(values):
    scores = T(*values)
    finite = torch.isfinite(scores)
    if not finite.any():
        return
    clean, _ = finite_or_worst(scores)
    assert torch.isfinite(clean).all()
    if (~finite).any():
        assert clean[~finite].max() < clean[finite].min()
