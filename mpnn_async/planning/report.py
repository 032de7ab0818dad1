"""A plain-text report of a plan: ownership, traffic and memory, as `mpnn plan` prints it."""

from __future__ import annotations

from typing import Sequence

from mpnn_async.model.optim import OptimizerKind, OptimizerSpec
from mpnn_async.planning.plan import Plan

__all__ = ["format_bytes", "format_plan_report"]

_COLUMN_GAP = "  "


def format_plan_report(
    plan: Plan, *, optimizer: OptimizerKind | str = OptimizerKind.ADAM, rows_in_flight: int = 64
) -> str:
    """Return the report: neurons and parameters, traffic per boundary, memory per partition."""
    widths = "-".join(str(plan.spec.width(layer)) for layer in range(plan.depth + 1))
    header = (
        f"plan {plan.plan_id}: model {widths} {plan.spec.dtype}, "
        f"{len(plan.partitions)} partitions ({', '.join(plan.partitions)})"
    )
    sections = [
        header,
        _ownership_section(plan),
        _traffic_section(plan),
        _memory_section(plan, OptimizerKind(optimizer), rows_in_flight),
    ]
    return "\n\n".join(sections) + "\n"


def format_bytes(size_bytes: int) -> str:
    """Format a byte count with a binary unit, such as "672 B" or "129.5 KiB"."""
    if size_bytes < 1024:
        return f"{size_bytes} B"
    value = size_bytes / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _ownership_section(plan: Plan) -> str:
    rows = [["layer", "width", *plan.partitions]]
    for layer in range(1, plan.depth + 1):
        cells = [str(layer), str(plan.spec.width(layer))]
        for name in plan.partitions:
            count = len(plan.neurons(name, layer))
            cells.append(f"{count} ({plan.parameter_count(name, layer)})" if count else "-")
        rows.append(cells)
    total_width = sum(plan.spec.width(layer) for layer in range(1, plan.depth + 1))
    totals = ["total", str(total_width)]
    for name in plan.partitions:
        owned = sum(len(plan.neurons(name, layer)) for layer in plan.layers_of(name))
        totals.append(f"{owned} ({plan.parameter_count(name)})")
    rows.append(totals)
    title = "Neurons (parameters: weights + biases) per partition and layer"
    return title + "\n" + _render(rows, right_from=1)


def _traffic_section(plan: Plan) -> str:
    rows = [["boundary", "fwd msgs", "fwd bytes/row", "bwd msgs", "bwd bytes/row"]]
    for boundary in plan.boundary_traffic():
        rows.append(
            [
                boundary.label,
                str(boundary.forward_messages),
                str(boundary.forward_bytes_per_row),
                str(boundary.backward_messages),
                str(boundary.backward_bytes_per_row),
            ]
        )
    title = (
        "Messages per micro-batch and payload bytes per micro-batch row across each boundary\n"
        "(slices a partition passes to itself and message headers are not counted)"
    )
    return title + "\n" + _render(rows, right_from=1)


def _memory_section(plan: Plan, optimizer: OptimizerKind, rows_in_flight: int) -> str:
    state_arrays = len(OptimizerSpec(kind=optimizer).state_names())
    total_header = f"total @ {rows_in_flight} rows"
    rows = [["partition", "parameters", "state", "activations/row", total_header]]
    for name in plan.partitions:
        estimate = plan.partition_cost(name, optimizer=optimizer)
        rows.append(
            [
                name,
                str(estimate.parameters),
                format_bytes(estimate.state_bytes),
                format_bytes(estimate.activation_bytes_per_row),
                format_bytes(estimate.memory_bytes(rows_in_flight=rows_in_flight)),
            ]
        )
    title = (
        "Estimated memory per partition: state = parameters + gradients + optimizer state\n"
        f"({optimizer}: {state_arrays} arrays per parameter); activations = layer inputs, z and\n"
        "f(z) kept per micro-batch row; the total holds that many rows at once"
    )
    return title + "\n" + _render(rows, right_from=1)


def _render(rows: Sequence[Sequence[str]], *, right_from: int) -> str:
    """Align columns: the first `right_from` columns to the left, the rest to the right."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if column < right_from else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(_COLUMN_GAP.join(cells).rstrip())
    return "\n".join(lines)
