"""Canonical JSON, the content-addressed plan id, and validation of loaded plans."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import orjson
import pytest

from mpnn_async.errors import ConfigError
from mpnn_async.planning import PLAN_ID_HEX_CHARS, Plan, build_plan, load_plan

from .plans import CONFIGS, make_spec, plan_table


@pytest.fixture
def tiny():
    return load_plan(CONFIGS / "tiny.toml")


def test_json_round_trip(tiny):
    data = tiny.to_json()
    loaded = Plan.from_json(data)
    assert loaded == tiny
    assert loaded.to_json() == data
    assert loaded.plan_id == tiny.plan_id
    assert loaded.ownership == tiny.ownership
    assert loaded.spec == tiny.spec


def test_json_is_canonical(tiny):
    data = tiny.to_json()
    decoded = json.loads(data)
    assert data == json.dumps(decoded, sort_keys=True, separators=(",", ":")).encode()
    assert decoded["format"] == 1
    assert decoded["partitions"] == ["a", "b", "c"]
    assert decoded["ownership"] == {
        "1": {"a": [0, 2, 4], "b": [1, 3, 5]},
        "2": {"b": [0, 1], "c": [2, 3, 4]},
        "3": {"a": [0], "c": [1, 2]},
    }
    assert decoded["model"] == tiny.spec.to_dict()


def test_plan_id_is_sha256_prefix(tiny):
    expected = hashlib.sha256(tiny.to_json()).hexdigest()[:PLAN_ID_HEX_CHARS]
    assert tiny.plan_id == expected
    assert len(tiny.plan_id) == 16


def test_same_plan_same_id():
    first = load_plan(CONFIGS / "digits.toml")
    second = load_plan(CONFIGS / "digits.toml")
    assert first.plan_id == second.plan_id
    assert first == second
    assert hash(first) == hash(second)


def test_equal_ownership_from_other_strategy_same_id():
    spec = make_spec(2, 6, 3)
    by_count = plan_table(
        ["a", "b"],
        {"layers": [1], "strategy": "count", "counts": {"a": 3, "b": 3}},
        {"layers": [2], "strategy": "count", "counts": {"a": 2, "b": 1}},
    )
    by_ids = plan_table(
        ["a", "b"],
        {"layers": [1], "strategy": "ids", "ids": {"a": ["0-2"], "b": ["3-5"]}},
        {"layers": [2], "strategy": "ids", "ids": {"a": [0, 1], "b": [2]}},
    )
    assert build_plan(spec, by_count).plan_id == build_plan(spec, by_ids).plan_id


def changed_variants(tiny):
    data = tiny.to_dict()
    moved = json.loads(json.dumps(data))
    moved["ownership"]["1"]["a"] = [0, 2]
    moved["ownership"]["1"]["b"] = [1, 3, 4, 5]
    reseeded = json.loads(json.dumps(data))
    reseeded["model"]["seed"] = 8
    retyped = json.loads(json.dumps(data))
    retyped["model"]["dtype"] = "float32"
    reordered = json.loads(json.dumps(data))
    reordered["partitions"] = ["b", "a", "c"]
    renamed = json.loads(json.dumps(data).replace('"c"', '"z"'))
    return {
        "moved neuron": moved,
        "seed": reseeded,
        "dtype": retyped,
        "partition order": reordered,
        "partition name": renamed,
    }


def test_any_change_changes_id(tiny):
    ids = {tiny.plan_id}
    for what, variant in changed_variants(tiny).items():
        plan = Plan.from_dict(variant)
        assert plan.plan_id not in ids, what
        assert plan != tiny, what
        ids.add(plan.plan_id)


def test_from_dict_normalises_order(tiny):
    data = tiny.to_dict()
    data["ownership"]["2"] = {"c": [4, 2, 3], "b": [1, 0], "a": []}
    plan = Plan.from_dict(data)
    assert plan.to_json() == tiny.to_json()


def test_plan_is_immutable(tiny):
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.partitions = ("x",)
    with pytest.raises(TypeError):
        tiny.ownership[1] = {}
    with pytest.raises(TypeError):
        tiny.ownership[1]["a"] = (0,)
    with pytest.raises(ValueError):
        tiny.neurons("a", 1)[0] = 5


def test_repr_shows_id_model_partitions(tiny):
    assert repr(tiny) == f"<Plan {tiny.plan_id} model=4-6-5-3 float64 partitions=a,b,c>"


def load_error(mutate, tiny):
    data = json.loads(tiny.to_json())
    mutate(data)
    with pytest.raises(ConfigError) as caught:
        Plan.from_json(orjson.dumps(data))
    return caught.value


def test_rejects_invalid_json():
    with pytest.raises(ConfigError) as caught:
        Plan.from_json(b'{"format": 1,')
    assert caught.value.field == "plan"
    assert "invalid JSON" in str(caught.value)


def test_rejects_non_object():
    with pytest.raises(ConfigError) as caught:
        Plan.from_json(b"[1, 2]")
    assert "JSON object" in str(caught.value)


def test_rejects_missing_and_unknown_keys(tiny):
    assert load_error(lambda d: d.pop("ownership"), tiny).field == "ownership"
    assert load_error(lambda d: d.update(extra=1), tiny).field == "extra"


def test_rejects_other_format(tiny):
    error = load_error(lambda d: d.update(format=2), tiny)
    assert error.field == "format"
    assert "unsupported plan format 2" in str(error)


def test_rejects_bad_model(tiny):
    error = load_error(lambda d: d["model"].update(dtype="int8"), tiny)
    assert error.field == "model.dtype"


def test_rejects_float_neuron_id(tiny):
    error = load_error(lambda d: d["ownership"]["1"]["a"].append(1.0), tiny)
    assert error.field == "ownership.1.a"
    assert "integers" in str(error)


def test_rejects_duplicate_owner(tiny):
    error = load_error(lambda d: d["ownership"]["1"]["b"].append(0), tiny)
    assert error.field == "ownership.1.b"
    assert "partitions 'a' and 'b' both claim neuron 0 of layer 1" in str(error)


def test_rejects_unowned_neuron(tiny):
    error = load_error(lambda d: d["ownership"]["2"]["c"].remove(3), tiny)
    assert error.field == "ownership.2"
    assert "layer 2 has no owner for neuron 3" in str(error)


def test_rejects_out_of_range_neuron(tiny):
    error = load_error(lambda d: d["ownership"]["3"]["c"].append(3), tiny)
    assert error.field == "ownership.3.c"
    assert "neuron 3, out of range for layer 3, which has 3 neurons" in str(error)


def test_rejects_unknown_partition(tiny):
    error = load_error(lambda d: d["ownership"]["3"].update(q=[]), tiny)
    assert error.field == "ownership.3.q"
    assert "unknown partition 'q'" in str(error)


@pytest.mark.parametrize("key", ["x", "01", "4", "0"])
def test_rejects_bad_layer_key(tiny, key):
    error = load_error(lambda d: d["ownership"].update({key: {"a": [0]}}), tiny)
    assert error.field == f"ownership.{key}"


def test_rejects_missing_layer(tiny):
    error = load_error(lambda d: d["ownership"].pop("2"), tiny)
    assert error.field == "ownership.2"
    assert "layer 2 has no owners" in str(error)


def test_rejects_idle_partition(tiny):
    error = load_error(lambda d: d["partitions"].append("d"), tiny)
    assert error.field == "partitions"
    assert "partition 'd' owns no neuron in any layer" in str(error)


def test_rejects_reserved_partition_name(tiny):
    def rename(data):
        data["partitions"][2] = "scheduler"
        for owned in data["ownership"].values():
            if "c" in owned:
                owned["scheduler"] = owned.pop("c")

    error = load_error(rename, tiny)
    assert error.field == "partitions[2]"
    assert "reserved" in str(error)


def test_rejects_float_format(tiny):
    error = load_error(lambda d: d.update(format=1.0), tiny)
    assert error.field == "format"


def test_rejects_partitions_string(tiny):
    error = load_error(lambda d: d.update(partitions="abc"), tiny)
    assert error.field == "partitions"
    assert "must be a list" in str(error)


def test_json_holds_integers_only(tiny):
    def numbers(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from numbers(item)
        elif isinstance(value, list):
            for item in value:
                yield from numbers(item)
        elif isinstance(value, (int, float)):
            yield value

    found = list(numbers(json.loads(tiny.to_json())))
    assert found
    assert all(type(number) is int for number in found)
