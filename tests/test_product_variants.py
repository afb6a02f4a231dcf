"""The CPU fast paths of a population product are checked variants of one reference: every combination of
switches, at any shapes, ranks, rows per member, mirrors, with or without bias (noise), in float32 and float64,
gives the reference's values — forward after forward of one call — and writes into none of its inputs.
The reference itself equals member-by-member evaluation (``test_products``)."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eggroll_trainer.population.cache import MemberBiases, ProductNoise
from eggroll_trainer.population.product_reference import reference_product
from eggroll_trainer.population.product_variants import (
    MEMBER_BIAS_VALUES,
    REFERENCE,
    Variant,
    choose_variant,
    variant_product,
)

EVERY_VARIANT = [Variant(*switches) for switches in itertools.product([False, True], repeat=6)]


@st.composite
def products(draw):
    """A product's inputs: x, W, b, the G × S noise layout, and the output rows of a shared x."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    g, s, r = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2])), draw(st.integers(1, 5))
    # one_of(common, rest): half the draws take the case fast paths are written for (one row per member, bias
    # noise, member-major rows), half anything else
    n, m = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    per = draw(st.one_of(st.just(1), st.sampled_from([2, 3, 4, 8, 9, 12])))
    tokens = draw(st.one_of(st.just(()), st.sampled_from([(1,), (3,)])))  # rows per member = per · T
    bias, bias_noise = draw(
        st.one_of(st.just((True, True)), st.sampled_from([(False, False), (True, False)]))
    )
    shared = draw(st.one_of(st.none(), st.sampled_from(["one block", "expanded"])))
    right = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    sigma = draw(st.sampled_from([0.01, 0.1, 1.0]))
    noise = ProductNoise(
        groups=g, mirrors=s, a_t=randn(g, r, m), b=randn(g, r, n).transpose(1, 2), alpha=sigma / math.sqrt(r),
        beta=randn(g, 1, m) if bias_noise else None, sigma_b=0.5 * sigma,
    )  # fmt: skip
    k = g * s
    if shared == "one block":  # batch 1, spread to K·per rows
        x, shared_rows = randn(1, *tokens, n), k * per
    elif shared == "expanded":  # (K, …) with stride 0: one row per member, all the same
        x, shared_rows = randn(1, *tokens, n).expand(k, *tokens, n), k
    else:
        x, shared_rows = randn(k * per, *tokens, n), None
    weight = randn(n, m) if right else randn(m, n)
    return x, weight, randn(m) if bias else None, noise, right, shared_rows


def snapshot(*tensors):
    return [None if t is None else t.clone() for t in tensors]


def assert_close(actual, expected):
    tol = 1e-5 if expected.dtype == torch.float32 else 1e-11
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@settings(max_examples=100, deadline=None)
@given(case=products())
def test_every_variant_equals_the_reference(case):
    x, weight, bias, noise, right, shared_rows = case
    expected = reference_product(x, weight, bias, noise, right, shared_rows)
    inputs = (x, weight, bias, noise.a_t, noise.b, noise.beta)
    before = snapshot(*inputs)
    for variant in EVERY_VARIANT:
        biases = MemberBiases()  # one call: the 1st forward builds, the 2nd keeps, the 3rd and 4th read it
        for _ in range(4):
            actual = variant_product(variant, x, weight, bias, noise, right, shared_rows, biases)
            assert actual.shape == expected.shape
            assert_close(actual, expected)
    for t, saved in zip(inputs, before):
        assert t is None or torch.equal(t, saved)  # nothing the product reads is written


def layout(rank=1, groups=3, mirrors=2, out=5, bias_noise=True):
    """A layout of the given shapes for the rule, which reads only shapes (stride-0 views: no memory)."""
    a_t = torch.zeros(()).expand(groups, rank, out) if rank else None
    beta = torch.zeros(()).expand(groups, 1, out) if bias_noise else None
    return ProductNoise(groups=groups, mirrors=mirrors, a_t=a_t, b=None, beta=beta, sigma_b=0.1, alpha=0.1)


def test_the_rule_takes_the_reference_off_the_cpu_and_for_full_rank_noise():
    assert choose_variant(layout(), cpu=False, shared=False, rows=1) == REFERENCE
    assert choose_variant(layout(rank=0), cpu=True, shared=False, rows=32) == REFERENCE


@pytest.mark.parametrize(
    "rows, shared, expected",
    [
        (1, False, Variant(noise_first=True, keep_member_bias=True, rank1_outer=True)),
        (4, False, Variant(noise_first=True, transposed_xb=True, keep_member_bias=True, rank1_outer=True)),
        (8, False, Variant(noise_first=True, transposed_xb=True, keep_member_bias=True, fused_bias=True,
                           rank1_outer=True)),
        (1, True, Variant(keep_member_bias=True, shared_gemm=True, rank1_outer=True)),
        (8, True, Variant(transposed_xb=True, keep_member_bias=True, shared_gemm=True, fused_bias=True,
                          rank1_outer=True)),
    ],
)  # fmt: skip
def test_the_rule_on_a_cpu_by_rows_per_member(rows, shared, expected):
    # mirrored pairs (S = 2): a group holds 2·rows rows, so x B turns around from 4 rows per member on
    assert choose_variant(layout(), cpu=True, shared=shared, rows=rows) == expected


def test_the_rule_keeps_no_members_bias_too_large_and_batches_rank_above_one():
    wide = layout(rank=2, groups=1, mirrors=1, out=MEMBER_BIAS_VALUES + 1)
    variant = choose_variant(wide, cpu=True, shared=False, rows=1)
    assert not variant.keep_member_bias and not variant.rank1_outer
