"""Estimates of what a plan costs: messages and bytes between layers, memory per partition.

All byte counts are tensor payloads in the model's dtype; message headers and
broker framing are not counted. Traffic is given per micro-batch: the number
of messages does not depend on the row count, and the bytes grow linearly with
it, so they are given per row.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from mpnn_async.errors import ConfigError
from mpnn_async.model.optim import OptimizerKind, OptimizerSpec

if TYPE_CHECKING:
    from mpnn_async.planning.plan import Plan

__all__ = ["BoundaryTraffic", "PartitionCost", "boundary_traffic", "partition_cost"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BoundaryTraffic:
    """The messages of one micro-batch crossing the boundary between layers `lower` and `lower + 1`.

    `lower` is 0 for the input, which the scheduler sends. For `lower == L` the
    other side is the loss, which the scheduler computes. A slice that a
    partition passes to itself travels no wire and is not counted.
    """

    lower: int
    # "input -> 1", "1 -> 2", ..., "L -> loss".
    label: str
    # Activation slices travelling up, from owners of `lower` to owners of `lower + 1`.
    forward_messages: int
    forward_bytes_per_row: int
    # Gradient slices travelling down, from owners of `lower + 1` to owners of `lower`.
    backward_messages: int
    backward_bytes_per_row: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class PartitionCost:
    """Parameters and an estimate of the memory one partition needs.

    `state_bytes` counts its weights and biases, their gradient accumulators
    and the optimizer's per-parameter arrays (none for sgd, one for momentum,
    two for adam, so adam needs 4x the parameter bytes).
    `activation_bytes_per_row` counts what one micro-batch row keeps between
    forward and backward in each layer the partition owns: the assembled
    layer input a[l-1] and z and f(z) of its own neurons.
    """

    partition: str
    parameters: int
    parameter_bytes: int
    optimizer: OptimizerKind
    state_bytes: int
    activation_bytes_per_row: int

    def memory_bytes(self, *, rows_in_flight: int) -> int:
        """Estimate the total bytes with `rows_in_flight` micro-batch rows held at once."""
        return self.state_bytes + rows_in_flight * self.activation_bytes_per_row


def boundary_traffic(plan: Plan) -> tuple[BoundaryTraffic, ...]:
    """Return the traffic across each boundary, from "input -> 1" to "L -> loss"."""
    itemsize = plan.spec.np_dtype.itemsize
    depth = plan.depth
    boundaries = []

    first_owners = plan.owners(1)
    boundaries.append(
        BoundaryTraffic(
            lower=0,
            label="input -> 1",
            forward_messages=len(first_owners),
            forward_bytes_per_row=len(first_owners) * plan.spec.width(0) * itemsize,
            backward_messages=0,
            backward_bytes_per_row=0,
        )
    )

    for lower in range(1, depth):
        upper = lower + 1
        forward = [
            len(plan.neurons(source, lower))
            for target in plan.owners(upper)
            for source in plan.forward_sources(target, upper)
        ]
        backward = [
            len(plan.neurons(receiver, lower))
            for sender in plan.owners(upper)
            for receiver in plan.backward_targets(sender, upper)
        ]
        boundaries.append(
            BoundaryTraffic(
                lower=lower,
                label=f"{lower} -> {upper}",
                forward_messages=len(forward),
                forward_bytes_per_row=sum(forward) * itemsize,
                backward_messages=len(backward),
                backward_bytes_per_row=sum(backward) * itemsize,
            )
        )

    # Each owner of the last layer sends its output slice to the scheduler and
    # receives the loss gradient of the same columns back.
    last_owners = plan.owners(depth)
    output_bytes = plan.spec.width(depth) * itemsize
    boundaries.append(
        BoundaryTraffic(
            lower=depth,
            label=f"{depth} -> loss",
            forward_messages=len(last_owners),
            forward_bytes_per_row=output_bytes,
            backward_messages=len(last_owners),
            backward_bytes_per_row=output_bytes,
        )
    )
    return tuple(boundaries)


def partition_cost(
    plan: Plan, partition: str, *, optimizer: OptimizerKind | str = OptimizerKind.ADAM
) -> PartitionCost:
    """Return the parameter count and memory estimate of one partition."""
    try:
        kind = OptimizerKind(optimizer)
    except ValueError:
        choices = ", ".join(member.value for member in OptimizerKind)
        raise ConfigError(
            "optimizer", f"unknown optimizer {optimizer!r}", fix=f"use one of {choices}"
        ) from None
    itemsize = plan.spec.np_dtype.itemsize
    parameters = plan.parameter_count(partition)
    # Parameters, gradient accumulators, then the optimizer's own arrays.
    arrays_per_parameter = 2 + len(OptimizerSpec(kind=kind).state_names())
    activations = sum(
        plan.spec.width(layer - 1) + 2 * len(plan.neurons(partition, layer))
        for layer in plan.layers_of(partition)
    )
    return PartitionCost(
        partition=partition,
        parameters=parameters,
        parameter_bytes=parameters * itemsize,
        optimizer=kind,
        state_bytes=parameters * itemsize * arrays_per_parameter,
        activation_bytes_per_row=activations * itemsize,
    )
