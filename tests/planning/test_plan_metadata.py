"""Ownership queries, message flow, routing keys and cost estimates on hand-checked plans.

The tiny config (4-6-5-3, float64) assigns:
    layer 1: a = 0, 2, 4     b = 1, 3, 5
    layer 2: b = 0, 1        c = 2, 3, 4
    layer 3: a = 0           c = 1, 2
"""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.errors import InvalidInputError
from mpnn_async.planning import SCHEDULER, build_plan, load_plan

from .plans import CONFIGS, make_spec, plan_table


@pytest.fixture
def tiny():
    return load_plan(CONFIGS / "tiny.toml")


def test_neurons_sorted_int64(tiny):
    ids = tiny.neurons("c", 2)
    assert ids.dtype == np.int64
    assert ids.tolist() == [2, 3, 4]
    assert tiny.neurons("a", 1).tolist() == [0, 2, 4]


def test_neurons_empty_when_not_owned(tiny):
    ids = tiny.neurons("a", 2)
    assert ids.dtype == np.int64
    assert ids.shape == (0,)


def test_owners_and_layers_of(tiny):
    assert tiny.partitions == ("a", "b", "c")
    assert tiny.depth == 3
    assert tiny.owners(1) == ("a", "b")
    assert tiny.owners(2) == ("b", "c")
    assert tiny.owners(3) == ("a", "c")
    assert tiny.layers_of("a") == (1, 3)
    assert tiny.layers_of("b") == (1, 2)
    assert tiny.layers_of("c") == (2, 3)


# (partition, layer) -> expected (forward sources, forward targets,
#                                 backward sources, backward targets)
TINY_FLOW = {
    ("a", 1): ((SCHEDULER,), ("b", "c"), ("b", "c"), ()),
    ("b", 1): ((SCHEDULER,), ("c",), ("c",), ()),
    ("b", 2): (("a",), ("a", "c"), ("a", "c"), ("a",)),
    ("c", 2): (("a", "b"), ("a",), ("a",), ("a", "b")),
    ("a", 3): (("b", "c"), (SCHEDULER,), (SCHEDULER,), ("b", "c")),
    ("c", 3): (("b",), (SCHEDULER,), (SCHEDULER,), ("b",)),
}


@pytest.mark.parametrize(("partition", "layer"), sorted(TINY_FLOW))
def test_message_flow_hand_checked(tiny, partition, layer):
    forward_sources, forward_targets, backward_sources, backward_targets = TINY_FLOW[
        (partition, layer)
    ]
    assert tiny.forward_sources(partition, layer) == forward_sources
    assert tiny.forward_targets(partition, layer) == forward_targets
    assert tiny.backward_sources(partition, layer) == backward_sources
    assert tiny.backward_targets(partition, layer) == backward_targets


def test_single_partition_talks_only_to_scheduler():
    spec = make_spec(3, 4, 5, 2)
    plan = build_plan(spec, plan_table(["solo"], default={"strategy": "even"}))
    assert plan.forward_sources("solo", 1) == (SCHEDULER,)
    assert plan.forward_targets("solo", 1) == ()
    assert plan.forward_sources("solo", 2) == ()
    assert plan.backward_targets("solo", 3) == ()
    assert plan.forward_targets("solo", 3) == (SCHEDULER,)
    assert plan.backward_sources("solo", 3) == (SCHEDULER,)


@pytest.mark.parametrize(
    "call",
    [
        lambda plan: plan.neurons("z", 1),
        lambda plan: plan.neurons("a", 0),
        lambda plan: plan.neurons("a", 4),
        lambda plan: plan.owners(0),
        lambda plan: plan.layers_of("scheduler"),
        lambda plan: plan.forward_sources("a", 2),
        lambda plan: plan.backward_targets("c", 1),
        lambda plan: plan.routing_key("z"),
        lambda plan: plan.bindings("z"),
    ],
)
def test_bad_queries_raise(tiny, call):
    with pytest.raises(InvalidInputError):
        call(tiny)


def test_query_error_names_partition_and_layer(tiny):
    with pytest.raises(InvalidInputError) as caught:
        tiny.forward_sources("a", 2)
    assert "partition 'a' owns no neuron of layer 2" in str(caught.value)
    assert "[1, 3]" in str(caught.value)


def test_routing_keys(tiny):
    assert tiny.routing_key("b") == "part.b"
    assert tiny.scheduler_routing_key() == "sched"
    assert tiny.bindings("b") == ("part.b",)
    keys = {tiny.routing_key(name) for name in tiny.partitions}
    assert len(keys) == 3
    assert tiny.scheduler_routing_key() not in keys


def test_boundary_traffic_hand_checked(tiny):
    traffic = {boundary.label: boundary for boundary in tiny.boundary_traffic()}
    assert list(traffic) == ["input -> 1", "1 -> 2", "2 -> 3", "3 -> loss"]
    rows = {
        label: (
            boundary.forward_messages,
            boundary.forward_bytes_per_row,
            boundary.backward_messages,
            boundary.backward_bytes_per_row,
        )
        for label, boundary in traffic.items()
    }
    # input -> 1: the scheduler sends all 4 inputs (8 bytes each) to a and b.
    assert rows["input -> 1"] == (2, 64, 0, 0)
    # 1 -> 2: b gets a's 3 columns; c gets a's 3 and b's 3. Backward mirrors it.
    assert rows["1 -> 2"] == (3, 72, 3, 72)
    # 2 -> 3: a gets b's 2 and c's 3 columns; c gets b's 2.
    assert rows["2 -> 3"] == (3, 56, 3, 56)
    # 3 -> loss: a and c send their slices of the 3 outputs and get the gradient back.
    assert rows["3 -> loss"] == (2, 24, 2, 24)


def test_partition_parameters_hand_checked(tiny):
    # a: 3 rows of layer 1 (4 inputs + bias) + 1 row of layer 3 (5 + bias).
    assert tiny.parameter_count("a") == 3 * 5 + 1 * 6
    assert tiny.parameter_count("b") == 3 * 5 + 2 * 7
    assert tiny.parameter_count("c") == 3 * 7 + 2 * 6
    assert tiny.parameter_count("c", 2) == 21
    total = sum(tiny.parameter_count(name) for name in tiny.partitions)
    assert total == tiny.spec.parameter_count()


@pytest.mark.parametrize(("optimizer", "arrays"), [("sgd", 2), ("momentum", 3), ("adam", 4)])
def test_partition_memory_estimate(tiny, optimizer, arrays):
    estimate = tiny.partition_cost("a", optimizer=optimizer)
    assert estimate.parameters == 21
    assert estimate.parameter_bytes == 21 * 8
    assert estimate.state_bytes == 21 * 8 * arrays
    # Layer 1: input 4 + z and f(z) of 3 neurons; layer 3: input 5 + 2 * 1.
    assert estimate.activation_bytes_per_row == (4 + 6 + 5 + 2) * 8
    assert estimate.memory_bytes(rows_in_flight=10) == estimate.state_bytes + 10 * 17 * 8


def test_partition_cost_unknown_optimizer(tiny):
    with pytest.raises(InvalidInputError):
        tiny.partition_cost("a", optimizer="lbfgs")


def test_whole_layer_plan_traffic():
    spec = make_spec(10, 20, 30, 5, dtype="float32")
    table = plan_table(
        ["x", "y"],
        {"layers": [1, 2], "strategy": "whole", "partition": "x"},
        {"layers": [3], "strategy": "whole", "partition": "y"},
    )
    traffic = build_plan(spec, table).boundary_traffic()
    # Layers 1 and 2 are both on x, so nothing crosses 1 -> 2.
    assert (traffic[1].forward_messages, traffic[1].backward_messages) == (0, 0)
    assert traffic[2].forward_messages == 1
    assert traffic[2].forward_bytes_per_row == 30 * 4
    assert traffic[2].backward_bytes_per_row == 30 * 4
