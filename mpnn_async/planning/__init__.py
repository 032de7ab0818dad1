"""Partitions of a network by neurons: the `[plan]` config, the Neuron Distributor and `Plan`.

`load_plan(path)` or `build_plan(spec, plan_table)` apply the strategies of a
`[plan]` table (see `plan_config`) and return a validated, content-addressed
`Plan`. The runtime reads ownership, message flow, routing keys and cost
estimates from the plan, and cuts or stitches parameters with
`slice_parameters` and `assemble_parameters`.
"""

from mpnn_async.planning.cost import BoundaryTraffic, PartitionCost
from mpnn_async.planning.distributor import (
    build_plan,
    largest_remainder_counts,
    load_plan,
    plan_from_config,
)
from mpnn_async.planning.naming import PARTITION_NAME_PATTERN, SCHEDULER
from mpnn_async.planning.parameters import assemble_parameters, slice_parameters
from mpnn_async.planning.plan import FORMAT_VERSION, PLAN_ID_HEX_CHARS, Plan
from mpnn_async.planning.plan_config import LayerRule, PlanConfig, Strategy

__all__ = [
    "BoundaryTraffic",
    "FORMAT_VERSION",
    "LayerRule",
    "PARTITION_NAME_PATTERN",
    "PLAN_ID_HEX_CHARS",
    "PartitionCost",
    "Plan",
    "PlanConfig",
    "SCHEDULER",
    "Strategy",
    "assemble_parameters",
    "build_plan",
    "largest_remainder_counts",
    "load_plan",
    "plan_from_config",
    "slice_parameters",
]
