"""Uniform strategies written as `--strategy` strings."""

from __future__ import annotations

import pytest

from mpnn_async.errors import ConfigError
from mpnn_async.planning import build_plan
from mpnn_async.planning.uniform import parse_partitions_option, uniform_plan_config

from .plans import make_spec


def build(strategy, partitions, *widths):
    spec = make_spec(*widths)
    return build_plan(spec, uniform_plan_config(strategy, partitions, depth=spec.depth))


def sizes(plan, layer):
    return [len(plan.neurons(name, layer)) for name in plan.partitions]


@pytest.mark.parametrize("strategy", ["even", "count", " Even "])
def test_even_splits_every_layer(strategy):
    plan = build(strategy, ("p1", "p2", "p3"), 5, 10, 7, 2)
    assert sizes(plan, 1) == [4, 3, 3]
    assert sizes(plan, 2) == [3, 2, 2]
    # Two outputs among three partitions: p3 owns none of layer 3, which is allowed.
    assert sizes(plan, 3) == [1, 1, 0]
    assert plan.neurons("p2", 1).tolist() == [4, 5, 6]


def test_percent_applies_shares_in_partition_order():
    plan = build("percent:50,30,20", ("a", "b", "c"), 64, 128, 64, 10)
    assert sizes(plan, 1) == [64, 38, 26]
    assert sizes(plan, 2) == [32, 19, 13]
    assert sizes(plan, 3) == [5, 3, 2]


def test_layers_assigns_contiguous_blocks():
    plan = build("layers", ("a", "b", "c"), 3, 4, 5, 6, 7)
    assert plan.layers_of("a") == (1, 2)
    assert plan.layers_of("b") == (3,)
    assert plan.layers_of("c") == (4,)
    assert plan.neurons("a", 2).tolist() == list(range(5))


def strategy_error(strategy, partitions=("a", "b"), depth=3):
    with pytest.raises(ConfigError) as caught:
        uniform_plan_config(strategy, partitions, depth=depth)
    return caught.value


def test_layers_needs_enough_layers():
    error = strategy_error("layers", ("a", "b", "c", "d"))
    assert error.field == "--partitions"
    assert "4 partitions but the model has only 3 dense layers" in str(error)


@pytest.mark.parametrize(
    ("strategy", "problem"),
    [
        ("percent:50", "1 shares for 2 partitions"),
        ("percent:", "percent needs shares"),
        ("percent:50,x", "share 'x' is not a number"),
        ("percent:50,0", "must be a positive number"),
        ("percent:50,nan", "must be a positive number"),
        ("even:3", "takes no argument"),
        ("ids", "no command-line form"),
        ("random", "unknown strategy 'random'"),
    ],
)
def test_bad_strategy_strings(strategy, problem):
    error = strategy_error(strategy)
    assert error.field == "--strategy"
    assert problem in str(error)


def test_partitions_option_count():
    assert parse_partitions_option("3") == ("p1", "p2", "p3")


def test_partitions_option_names():
    assert parse_partitions_option("x, y,z") == ("x", "y", "z")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0", "at least 1"),
        ("a,a", "listed twice"),
        ("a,,b", "invalid partition name"),
        ("a,scheduler", "reserved"),
    ],
)
def test_partitions_option_errors(text, problem):
    with pytest.raises(ConfigError) as caught:
        parse_partitions_option(text)
    assert caught.value.field == "--partitions"
    assert problem in str(caught.value)
