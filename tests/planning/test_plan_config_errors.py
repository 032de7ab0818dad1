"""Validation of the `[plan]` table: layer coverage, keys, partition names."""

from __future__ import annotations

import pytest

from mpnn_async.errors import ConfigError
from mpnn_async.planning import PARTITION_NAME_PATTERN, build_plan, plan_from_config

from .plans import make_spec, plan_table

WHOLE_A = {"strategy": "whole", "partition": "a"}


def build_error(table, spec=None):
    with pytest.raises(ConfigError) as caught:
        build_plan(spec or make_spec(4, 5, 6, 2), table)
    return caught.value


def test_layer_covered_by_two_rules():
    error = build_error(
        plan_table(
            ["a", "b"],
            {"layers": [1, 2], **WHOLE_A},
            {"layers": ["2-3"], "strategy": "whole", "partition": "b"},
        )
    )
    assert error.field == "plan.layers[1].layers"
    assert "layer 2 is already covered by plan.layers[0]" in str(error)


def test_layer_listed_twice_in_one_rule():
    error = build_error(plan_table(["a"], {"layers": [1, "1-3"], **WHOLE_A}))
    assert error.field == "plan.layers[0].layers"
    assert "layer 1 is listed twice" in str(error)


def test_uncovered_layers_without_default():
    error = build_error(plan_table(["a"], {"layers": [2], **WHOLE_A}))
    assert error.field == "plan.layers"
    assert "no rule covers layers 1, 3" in str(error)
    assert "plan.default" in str(error)


def test_default_covers_remaining_layers():
    table = plan_table(["a", "b"], {"layers": [2], **WHOLE_A}, default={"strategy": "even"})
    plan = build_plan(make_spec(4, 5, 6, 2), table)
    assert plan.owners(1) == ("a", "b")
    assert plan.owners(2) == ("a",)
    assert plan.owners(3) == ("a", "b")


def test_layer_beyond_depth():
    error = build_error(plan_table(["a"], {"layers": ["1-5"], **WHOLE_A}))
    assert error.field == "plan.layers[0].layers"
    assert "lists layers 4-5, but the model has only 3 dense layers" in str(error)


def test_layer_zero_is_input():
    error = build_error(plan_table(["a"], {"layers": [0, 1, 2, 3], **WHOLE_A}))
    assert error.field == "plan.layers[0].layers"
    assert "layer 0 is the input" in str(error)


def test_rule_without_layers():
    error = build_error(plan_table(["a"], dict(WHOLE_A)))
    assert error.field == "plan.layers[0].layers"
    assert "missing" in str(error)


def test_default_with_layers_key():
    error = build_error(plan_table(["a"], default={"layers": [1], **WHOLE_A}))
    assert error.field == "plan.default.layers"
    assert "not allowed in the default rule" in str(error)


def test_key_of_other_strategy():
    rule = {"layers": [1, 2, 3], "strategy": "count", "shares": {"a": 1}}
    error = build_error(plan_table(["a"], rule))
    assert error.field == "plan.layers[0].shares"
    assert "not used by strategy 'count'" in str(error)


def test_unknown_rule_key():
    error = build_error(plan_table(["a"], {"layers": [1, 2, 3], "colour": "red", **WHOLE_A}))
    assert error.field == "plan.layers[0].colour"
    assert "unknown key" in str(error)


def test_unknown_plan_key():
    table = plan_table(["a"], {"layers": [1, 2, 3], **WHOLE_A})
    table["workers"] = 3
    error = build_error(table)
    assert error.field == "plan.workers"


def test_unknown_strategy():
    error = build_error(plan_table(["a"], {"layers": [1, 2, 3], "strategy": "random"}))
    assert error.field == "plan.layers[0].strategy"
    assert "unknown strategy 'random'" in str(error)
    assert "count, percent, even, ids, whole" in str(error)


def test_missing_strategy_option():
    error = build_error(plan_table(["a"], {"layers": [1, 2, 3], "strategy": "count"}))
    assert error.field == "plan.layers[0].counts"
    assert "missing" in str(error)


def test_unknown_partition_in_counts():
    rule = {"layers": [1, 2, 3], "strategy": "count", "counts": {"a": 5, "q": 1}}
    error = build_error(plan_table(["a"], rule))
    assert error.field == "plan.layers[0].counts.q"
    assert "unknown partition 'q'" in str(error)


def test_allow_empty_must_be_bool():
    rule = {"layers": [1, 2, 3], "allow_empty": "yes", **WHOLE_A}
    error = build_error(plan_table(["a"], rule))
    assert error.field == "plan.layers[0].allow_empty"


def test_no_rules_at_all():
    error = build_error({"partitions": ["a"]})
    assert error.field == "plan"
    assert "has no rule" in str(error)


def test_partition_owning_nothing():
    error = build_error(plan_table(["a", "b"], default=dict(WHOLE_A)))
    assert error.field == "plan.partitions"
    assert "partition 'b' owns no neuron in any layer" in str(error)


@pytest.mark.parametrize(
    ("partitions", "field", "problem"),
    [
        ([], "plan.partitions", "is empty"),
        ("a,b", "plan.partitions", "must be a list"),
        (["a", "a"], "plan.partitions[1]", "listed twice"),
        (["a", "scheduler"], "plan.partitions[1]", "reserved"),
        (["a", "-b"], "plan.partitions[1]", "invalid partition name"),
        (["a", "b c"], "plan.partitions[1]", "invalid partition name"),
        (["a", "x" * 65], "plan.partitions[1]", "invalid partition name"),
        (["a", 3], "plan.partitions[1]", "must be a string"),
    ],
)
def test_partition_names_validated(partitions, field, problem):
    error = build_error({"partitions": partitions, "default": {"strategy": "even"}})
    assert error.field == field
    assert problem in str(error)


def test_partition_name_pattern_limits():
    assert PARTITION_NAME_PATTERN.fullmatch("x" * 64)
    assert PARTITION_NAME_PATTERN.fullmatch("p1.hidden_a-2")
    assert not PARTITION_NAME_PATTERN.fullmatch("x" * 65)
    assert not PARTITION_NAME_PATTERN.fullmatch("_a")


def test_plan_from_config_ignores_other_tables():
    config = {
        "model": {"input": 3, "layers": [{"width": 4}, {"width": 2, "activation": "identity"}]},
        "plan": {"partitions": ["a"], "default": WHOLE_A},
        "job": {"anything": True},
        "optimizer": {"kind": "nonsense"},
    }
    plan = plan_from_config(config)
    assert plan.partitions == ("a",)


def test_plan_from_config_validates_model():
    config = {"model": {"input": 0, "layers": [{"width": 4}]}, "plan": {"partitions": ["a"]}}
    with pytest.raises(ConfigError) as caught:
        plan_from_config(config)
    assert caught.value.field == "model.input"


@pytest.mark.parametrize("missing", ["model", "plan"])
def test_plan_from_config_missing_table(missing):
    config = {
        "model": {"input": 3, "layers": [{"width": 4}]},
        "plan": {"partitions": ["a"], "default": WHOLE_A},
    }
    del config[missing]
    with pytest.raises(ConfigError) as caught:
        plan_from_config(config)
    assert caught.value.field == missing
    assert f"[{missing}]" in str(caught.value)
