"""The Neuron Distributor: turn a model and its `[plan]` rules into a `Plan`.

Rounding of `percent` and `even` rules (the largest-remainder, or Hamilton,
method): partition i with share s_i of a layer of width W has the exact quota
q_i = W * s_i / sum(s). Each partition first gets floor(q_i) neurons. The
W - sum(floor(q_i)) neurons left over go one each to the partitions with the
largest fractional parts q_i - floor(q_i). A tie between equal fractional parts
goes to the partition listed first in `plan.partitions`. Quotas are exact
fractions, so the result does
not depend on float rounding. Every partition therefore gets floor(q_i) or
floor(q_i) + 1 neurons, and the counts sum to W.

`count`, `percent` and `even` then give the partitions contiguous index ranges
in plan order: the first partition gets 0..n_1-1, the next n_1..n_1+n_2-1, and so
on, so every neuron is owned exactly once.
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from typing import Any, Mapping, Sequence

import numpy as np

from mpnn_async.config import load_toml, require_table
from mpnn_async.errors import ConfigError
from mpnn_async.model.spec import NetworkSpec
from mpnn_async.planning.ids import describe_ids, describe_runs
from mpnn_async.planning.ownership import check_layer_assignment
from mpnn_async.planning.plan import Plan
from mpnn_async.planning.plan_config import LayerRule, PlanConfig, Strategy

__all__ = [
    "build_plan",
    "contiguous_ranges",
    "largest_remainder_counts",
    "load_plan",
    "plan_from_config",
]

log = logging.getLogger(__name__)

_MODEL_FIX = "add a [model] table with input, layers, loss and dtype"
_PLAN_FIX = "add a [plan] table with partitions and [[plan.layers]] rules"
_EMPTY_FIX = {
    Strategy.COUNT: "give it a count above 0 or leave it out of the rule",
    Strategy.PERCENT: "raise its share or leave it out of the rule",
    Strategy.EVEN: "list fewer partitions in the rule",
    Strategy.IDS: "list its neurons or leave it out of the rule",
}


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read a TOML config file and build the plan of its `[model]` and `[plan]` tables."""
    return plan_from_config(load_toml(path))


def plan_from_config(config: Mapping[str, Any]) -> Plan:
    """Build the plan of a parsed config; tables other than `[model]` and `[plan]` are ignored."""
    spec = NetworkSpec.from_dict(require_table(config, "model", fix=_MODEL_FIX))
    return build_plan(spec, require_table(config, "plan", fix=_PLAN_FIX))


def build_plan(spec: NetworkSpec, plan_config: PlanConfig | Mapping[str, Any]) -> Plan:
    """Apply the rules of `plan_config` (parsed or a raw `[plan]` table) to every layer of `spec`.

    Raises `ConfigError` naming the rule's field, the partition, the layer and
    the offending neuron indices when the rules do not give every neuron of
    every layer to exactly one partition.
    """
    if not isinstance(plan_config, PlanConfig):
        plan_config = PlanConfig.from_dict(plan_config)
    rule_of_layer = _rules_by_layer(plan_config, spec.depth)

    ownership: dict[int, dict[str, tuple[int, ...]]] = {}
    for layer in range(1, spec.depth + 1):
        rule = rule_of_layer[layer]
        ownership[layer] = _assign_layer(rule, layer, spec.width(layer), plan_config.partitions)

    for name in plan_config.partitions:
        if not any(name in owned for owned in ownership.values()):
            raise ConfigError(
                "plan.partitions",
                f"partition {name!r} owns no neuron in any layer",
                fix="remove it from plan.partitions or name it in a rule",
            )
    plan = Plan(spec=spec, partitions=plan_config.partitions, ownership=ownership)
    log.debug("plan.built id=%s partitions=%s depth=%d", plan.plan_id, plan.partitions, plan.depth)
    return plan


def largest_remainder_counts(total: int, shares: Sequence[Fraction | int]) -> list[int]:
    """Split `total` items by positive `shares` with the largest-remainder method.

    Ties in the fractional part go to the earlier share. The result sums to
    `total`, and each count is the floor or the ceiling of its exact quota.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if not shares or any(share <= 0 for share in shares):
        raise ValueError(f"shares must be a non-empty list of positive numbers, got {shares!r}")
    share_sum = sum(Fraction(share) for share in shares)
    quotas = [total * Fraction(share) / share_sum for share in shares]
    counts = [math.floor(quota) for quota in quotas]
    left_over = total - sum(counts)
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for index in by_remainder[:left_over]:
        counts[index] += 1
    return counts


def contiguous_ranges(counts: Sequence[tuple[str, int]]) -> dict[str, range]:
    """Give each (partition, count) the next `count` indices, in the order given."""
    ranges: dict[str, range] = {}
    start = 0
    for name, count in counts:
        ranges[name] = range(start, start + count)
        start += count
    return ranges


def _rules_by_layer(config: PlanConfig, depth: int) -> dict[int, LayerRule]:
    covered: dict[int, LayerRule] = {}
    for rule in config.rules:
        field = f"{rule.field}.layers"
        for low, high in rule.layer_runs:
            if high > depth:
                missing = describe_runs("layer", [(max(low, depth + 1), high)])
                raise ConfigError(
                    field,
                    f"lists {missing}, but the model has only {depth} dense layers",
                    fix=f"use layers 1-{depth}",
                )
            for layer in range(low, high + 1):
                if layer not in covered:
                    covered[layer] = rule
                elif covered[layer] is rule:
                    raise ConfigError(field, f"layer {layer} is listed twice", fix="list it once")
                else:
                    raise ConfigError(
                        field,
                        f"layer {layer} is already covered by {covered[layer].field}",
                        fix="list each layer in one rule only",
                    )

    uncovered = [layer for layer in range(1, depth + 1) if layer not in covered]
    if uncovered:
        if config.default is None:
            raise ConfigError(
                "plan.layers",
                f"no rule covers {describe_ids('layer', uncovered)}",
                fix="add a [[plan.layers]] rule that lists them, or set plan.default",
            )
        for layer in uncovered:
            covered[layer] = config.default
    return covered


def _assign_layer(
    rule: LayerRule, layer: int, width: int, partitions: tuple[str, ...]
) -> dict[str, tuple[int, ...]]:
    if rule.strategy is Strategy.WHOLE and rule.partition is not None:
        return {rule.partition: tuple(range(width))}
    if rule.strategy is Strategy.IDS:
        return _assign_ids(rule, layer, width)

    if rule.strategy is Strategy.COUNT:
        counts = list(rule.counts)
        total = sum(count for _name, count in counts)
        if total != width:
            raise ConfigError(
                rule.option_field,
                f"counts sum to {total} but layer {layer} has {width} neurons",
                fix=f"make the counts add up to {width}",
            )
    elif rule.strategy is Strategy.PERCENT:
        names = [name for name, _share in rule.shares]
        shares = [share for _name, share in rule.shares]
        counts = list(zip(names, largest_remainder_counts(width, shares), strict=True))
    else:
        equal = [1] * len(rule.members)
        counts = list(zip(rule.members, largest_remainder_counts(width, equal), strict=True))

    _check_not_empty(rule, layer, width, counts)
    return {name: tuple(indices) for name, indices in contiguous_ranges(counts).items() if indices}


def _assign_ids(rule: LayerRule, layer: int, width: int) -> dict[str, tuple[int, ...]]:
    assignment = []
    for name, runs in rule.ids:
        field = f"{rule.option_field}.{name}"
        # Check the runs before expanding them, so "0-999999999" fails fast.
        outside = [(max(low, width), high) for low, high in runs if high >= width]
        if outside:
            raise ConfigError(
                field,
                f"partition {name!r} lists {describe_runs('neuron', outside)}, "
                f"out of range for layer {layer}, which has {width} neurons",
                fix=f"use indices 0-{width - 1}",
            )
        indices = [index for low, high in runs for index in range(low, high + 1)]
        assignment.append((name, np.array(indices, dtype=np.int64)))

    counts = [(name, len(indices)) for name, indices in assignment]
    _check_not_empty(rule, layer, width, counts)
    return check_layer_assignment(
        layer=layer,
        width=width,
        assignment=assignment,
        layer_field=rule.option_field,
        partition_field=lambda name: f"{rule.option_field}.{name}",
    )


def _check_not_empty(
    rule: LayerRule, layer: int, width: int, counts: Sequence[tuple[str, int]]
) -> None:
    if rule.allow_empty:
        return
    # An `even` rule may list no partitions at all, so its errors name the rule.
    base_field = rule.field if rule.strategy is Strategy.EVEN else rule.option_field
    for name, count in counts:
        if count == 0:
            raise ConfigError(
                f"{base_field}.{name}",
                f"partition {name!r} gets no neuron of layer {layer}, which has {width} neurons",
                fix=f"{_EMPTY_FIX[rule.strategy]}, or set {rule.field}.allow_empty = true",
            )
