"""The four strategies (count, percent, ids, whole), `even`, and mixtures across layers."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.errors import ConfigError
from mpnn_async.planning import build_plan, load_plan

from .plans import CONFIGS, make_spec, plan_table


def owned(plan, layer):
    """Return {partition: list of neuron indices} for one layer."""
    return {name: plan.neurons(name, layer).tolist() for name in plan.owners(layer)}


def test_count_gives_contiguous_ranges_in_plan_order():
    spec = make_spec(3, 10, 4)
    # The table lists b first; the ranges still follow plan.partitions (a, b, c).
    table = plan_table(
        ["a", "b", "c"],
        {"layers": [1], "strategy": "count", "counts": {"b": 3, "a": 5, "c": 2}},
        {"layers": [2], "strategy": "count", "counts": {"c": 4}},
    )
    plan = build_plan(spec, table)
    assert owned(plan, 1) == {"a": [0, 1, 2, 3, 4], "b": [5, 6, 7], "c": [8, 9]}
    assert owned(plan, 2) == {"c": [0, 1, 2, 3]}


def test_count_sum_mismatch_names_field_and_layer():
    spec = make_spec(3, 10, 4)
    table = plan_table(
        ["a", "b"],
        {"layers": [1], "strategy": "whole", "partition": "a"},
        {"layers": [2], "strategy": "count", "counts": {"a": 2, "b": 3}},
    )
    with pytest.raises(ConfigError) as caught:
        build_plan(spec, table)
    assert caught.value.field == "plan.layers[1].counts"
    assert "sum to 5" in str(caught.value)
    assert "layer 2 has 4 neurons" in str(caught.value)


def test_count_zero_needs_allow_empty():
    spec = make_spec(3, 4, 2)
    rule = {"layers": [1], "strategy": "count", "counts": {"a": 4, "b": 0}}
    table = plan_table(["a", "b"], rule, default={"strategy": "even"})
    with pytest.raises(ConfigError) as caught:
        build_plan(spec, table)
    assert caught.value.field == "plan.layers[0].counts.b"
    assert "gets no neuron of layer 1" in str(caught.value)
    assert "allow_empty" in str(caught.value)

    rule["allow_empty"] = True
    plan = build_plan(spec, table)
    assert plan.owners(1) == ("a",)
    assert plan.neurons("b", 1).size == 0


def test_percent_digits_layer_uses_largest_remainder():
    spec = make_spec(64, 128, 10)
    table = plan_table(
        ["a", "b", "c"],
        {"layers": [1], "strategy": "percent", "shares": {"a": 50, "b": 30, "c": 20}},
        default={"strategy": "whole", "partition": "c"},
    )
    plan = build_plan(spec, table)
    # Quotas 64, 38.4, 25.6: floors 64, 38, 25 leave one neuron for c (remainder .6).
    assert plan.neurons("a", 1).tolist() == list(range(0, 64))
    assert plan.neurons("b", 1).tolist() == list(range(64, 102))
    assert plan.neurons("c", 1).tolist() == list(range(102, 128))


def test_percent_shares_are_normalised():
    spec = make_spec(2, 37, 3)
    rule_percent = {"layers": [1], "strategy": "percent", "shares": {"a": 50, "b": 30, "c": 20}}
    rule_fraction = {"layers": [1], "strategy": "percent", "shares": {"a": 0.5, "b": 0.3, "c": 0.2}}
    rule_small = {"layers": [1], "strategy": "percent", "shares": {"a": 5, "b": 3, "c": 2}}
    default = {"strategy": "whole", "partition": "a"}
    plans = [
        build_plan(spec, plan_table(["a", "b", "c"], rule, default=default))
        for rule in (rule_percent, rule_fraction, rule_small)
    ]
    assert plans[0] == plans[1] == plans[2]
    assert [len(plans[0].neurons(name, 1)) for name in "abc"] == [19, 11, 7]


def test_percent_ties_go_to_earlier_partition():
    spec = make_spec(2, 10, 5)
    shares = {"a": 1, "b": 1, "c": 1}
    table = plan_table(["a", "b", "c"], default={"strategy": "percent", "shares": shares})
    plan = build_plan(spec, table)
    assert [len(plan.neurons(name, 1)) for name in "abc"] == [4, 3, 3]
    assert [len(plan.neurons(name, 2)) for name in "abc"] == [2, 2, 1]


@pytest.mark.parametrize("share", [0, -5, float("inf"), float("nan"), True, "50"])
def test_percent_rejects_bad_share(share):
    spec = make_spec(2, 10, 5)
    table = plan_table(["a", "b"], default={"strategy": "percent", "shares": {"a": 1, "b": share}})
    with pytest.raises(ConfigError) as caught:
        build_plan(spec, table)
    assert caught.value.field == "plan.default.shares.b"
    assert "positive number" in str(caught.value)


def test_percent_empty_partition_names_layer():
    spec = make_spec(2, 10, 3)
    shares = {"a": 1, "b": 1, "c": 1, "d": 1}
    table = plan_table(["a", "b", "c", "d"], default={"strategy": "percent", "shares": shares})
    with pytest.raises(ConfigError) as caught:
        build_plan(spec, table)
    assert caught.value.field == "plan.default.shares.d"
    assert "gets no neuron of layer 2, which has 3 neurons" in str(caught.value)


def test_even_splits_among_listed_partitions():
    spec = make_spec(2, 7, 4)
    table = plan_table(
        ["a", "b", "c"],
        {"layers": [1], "strategy": "even"},
        {"layers": [2], "strategy": "even", "partitions": ["c", "b"]},
    )
    plan = build_plan(spec, table)
    assert owned(plan, 1) == {"a": [0, 1, 2], "b": [3, 4], "c": [5, 6]}
    assert owned(plan, 2) == {"b": [0, 1], "c": [2, 3]}


def test_ids_accept_ints_and_ranges():
    spec = make_spec(2, 8, 3)
    table = plan_table(
        ["a", "b"],
        {"layers": [1], "strategy": "ids", "ids": {"a": ["0-2", 7], "b": [6, "3-5"]}},
        {"layers": [2], "strategy": "ids", "ids": {"a": [2, 0], "b": ["1"]}},
    )
    plan = build_plan(spec, table)
    assert owned(plan, 1) == {"a": [0, 1, 2, 7], "b": [3, 4, 5, 6]}
    assert owned(plan, 2) == {"a": [0, 2], "b": [1]}


def ids_error(ids, *, width=6, allow_empty=False):
    spec = make_spec(2, width, 3)
    rule = {"layers": [1], "strategy": "ids", "ids": ids}
    if allow_empty:
        rule["allow_empty"] = True
    table = plan_table(["a", "b"], rule, default={"strategy": "whole", "partition": "a"})
    with pytest.raises(ConfigError) as caught:
        build_plan(spec, table)
    return caught.value


def test_ids_out_of_range_names_partition_layer_ids():
    error = ids_error({"a": ["0-2"], "b": ["3-8"]})
    assert error.field == "plan.layers[0].ids.b"
    assert "partition 'b' lists neurons 6-8" in str(error)
    assert "out of range for layer 1, which has 6 neurons" in str(error)
    assert "0-5" in str(error)


def test_ids_huge_range_fails_without_expanding():
    error = ids_error({"a": ["0-2"], "b": ["3-999999999999"]})
    assert error.field == "plan.layers[0].ids.b"
    assert "neurons 6-999999999999" in str(error)


def test_ids_duplicate_within_partition():
    error = ids_error({"a": ["0-2", 1, 2], "b": ["3-5"]})
    assert error.field == "plan.layers[0].ids.a"
    assert "partition 'a' lists neurons 1-2 of layer 1 more than once" in str(error)


def test_ids_overlap_between_partitions():
    error = ids_error({"a": ["0-3"], "b": ["2-5"]})
    assert error.field == "plan.layers[0].ids.b"
    assert "partitions 'a' and 'b' both claim neurons 2-3 of layer 1" in str(error)


def test_ids_unowned_neurons():
    error = ids_error({"a": [0, 1], "b": [3, 5]})
    assert error.field == "plan.layers[0].ids"
    assert "layer 1 has no owner for neurons 2, 4" in str(error)


def test_ids_empty_partition_needs_allow_empty():
    error = ids_error({"a": ["0-5"], "b": []})
    assert error.field == "plan.layers[0].ids.b"
    assert "gets no neuron of layer 1" in str(error)
    assert "plan.layers[0].allow_empty = true" in str(error)


def test_ids_empty_partition_allowed_when_asked():
    spec = make_spec(2, 6, 3)
    rule = {"layers": [1], "strategy": "ids", "ids": {"a": ["0-5"], "b": []}, "allow_empty": True}
    plan = build_plan(spec, plan_table(["a", "b"], rule, default={"strategy": "even"}))
    assert plan.owners(1) == ("a",)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["5-2"], "reversed"),
        (["a-b"], "invalid neuron range"),
        ([-1], "negative"),
        ([1.5], "integer or a range string"),
        ([True], "integer or a range string"),
        (7, "list of neuron indices"),
    ],
)
def test_ids_syntax_errors(value, problem):
    error = ids_error({"a": value, "b": ["0-5"]})
    assert error.field.startswith("plan.layers[0].ids.a")
    assert problem in str(error)


def test_whole_owns_entire_layers():
    spec = make_spec(4, 5, 6, 2)
    table = plan_table(
        ["x", "y"],
        {"layers": ["1-2"], "strategy": "whole", "partition": "x"},
        {"layers": [3], "strategy": "whole", "partition": "y"},
    )
    plan = build_plan(spec, table)
    assert plan.layers_of("x") == (1, 2)
    assert plan.layers_of("y") == (3,)
    assert plan.neurons("x", 2).tolist() == list(range(6))
    assert plan.neurons("y", 3).tolist() == [0, 1]


def test_whole_unknown_partition():
    spec = make_spec(4, 5, 2)
    table = plan_table(["x"], {"layers": [1, 2], "strategy": "whole", "partition": "z"})
    with pytest.raises(ConfigError) as caught:
        build_plan(spec, table)
    assert caught.value.field == "plan.layers[0].partition"
    assert "unknown partition 'z'" in str(caught.value)


def test_digits_config_mixes_strategies():
    plan = load_plan(CONFIGS / "digits.toml")
    assert plan.partitions == ("a", "b", "c")
    assert [len(plan.neurons(name, 1)) for name in plan.partitions] == [64, 38, 26]
    assert owned(plan, 2) == {"a": list(range(32)), "b": list(range(32, 64))}
    assert owned(plan, 3) == {"c": list(range(10))}


def test_mnist_config_default_and_whole():
    plan = load_plan(CONFIGS / "mnist.toml")
    assert plan.partitions == ("a", "b")
    assert owned(plan, 1) == {"a": list(range(128)), "b": list(range(128, 256))}
    assert owned(plan, 2) == {"a": list(range(64)), "b": list(range(64, 128))}
    assert owned(plan, 3) == {"b": list(range(10))}


def test_tiny_config_explicit_ids():
    plan = load_plan(CONFIGS / "tiny.toml")
    assert owned(plan, 1) == {"a": [0, 2, 4], "b": [1, 3, 5]}
    assert owned(plan, 2) == {"b": [0, 1], "c": [2, 3, 4]}
    assert owned(plan, 3) == {"a": [0], "c": [1, 2]}


def test_every_neuron_owned_once_in_configs():
    for name in ("digits.toml", "mnist.toml", "tiny.toml"):
        plan = load_plan(CONFIGS / name)
        for layer in range(1, plan.depth + 1):
            ids = np.concatenate([plan.neurons(p, layer) for p in plan.partitions])
            assert sorted(ids.tolist()) == list(range(plan.spec.width(layer))), (name, layer)
