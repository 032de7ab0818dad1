"""Properties of the largest-remainder rounding behind `percent` and `even`."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpnn_async.errors import ConfigError
from mpnn_async.planning import build_plan, largest_remainder_counts

from .plans import make_spec

shares_strategy = st.lists(
    st.one_of(
        st.integers(min_value=1, max_value=1000),
        st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False),
    ),
    min_size=1,
    max_size=9,
)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(min_value=0, max_value=5000), shares=shares_strategy)
def test_counts_are_hamilton_apportionment(total, shares):
    counts = largest_remainder_counts(total, shares)

    assert sum(counts) == total
    share_sum = sum(Fraction(share) for share in shares)
    quotas = [total * Fraction(share) / share_sum for share in shares]
    for count, quota in zip(counts, quotas, strict=True):
        assert count in (math.floor(quota), math.floor(quota) + 1)

    # A partition rounded up has a larger remainder than any partition rounded
    # down, or an equal one and an earlier position.
    remainders = [quota - math.floor(quota) for quota in quotas]
    rounded_up = [i for i, (c, q) in enumerate(zip(counts, quotas, strict=True)) if c > q]
    rounded_down = [i for i in range(len(shares)) if i not in rounded_up]
    for up in rounded_up:
        for down in rounded_down:
            assert (remainders[up], -up) > (remainders[down], -down)


@settings(max_examples=100, deadline=None)
@given(total=st.integers(min_value=0, max_value=5000), shares=shares_strategy)
def test_counts_are_deterministic(total, shares):
    assert largest_remainder_counts(total, shares) == largest_remainder_counts(total, list(shares))


@settings(max_examples=150, deadline=None)
@given(
    widths=st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=4),
    shares=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=6),
)
def test_percent_plan_covers_every_neuron_once(widths, shares):
    names = [f"p{index}" for index in range(len(shares))]
    spec = make_spec(3, *widths)
    table = {
        "partitions": names,
        "default": {
            "strategy": "percent",
            "shares": dict(zip(names, shares, strict=True)),
            "allow_empty": True,
        },
    }
    per_layer = [largest_remainder_counts(width, shares) for width in widths]
    idle = [name for i, name in enumerate(names) if all(counts[i] == 0 for counts in per_layer)]
    if idle:
        # A partition that owns nothing in any layer is rejected by name.
        with pytest.raises(ConfigError) as caught:
            build_plan(spec, table)
        assert caught.value.field == "plan.partitions"
        assert repr(idle[0]) in str(caught.value)
        return

    plan = build_plan(spec, table)
    again = build_plan(spec, table)
    assert plan.to_json() == again.to_json()

    for layer in range(1, plan.depth + 1):
        width = spec.width(layer)
        pieces = [plan.neurons(name, layer) for name in names]
        joined = np.concatenate(pieces)
        # Contiguous ranges in plan order: concatenating them gives 0..width-1.
        assert joined.tolist() == list(range(width))
        expected = largest_remainder_counts(width, shares)
        assert [len(piece) for piece in pieces] == expected
