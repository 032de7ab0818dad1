"""The `[plan]` table of a config: partitions and the rule that splits each layer.

```toml
[plan]
partitions = ["a", "b", "c"]      # this order is the summation order of partial gradients
default = { strategy = "even" }   # optional: the rule for every layer no [[plan.layers]] names

[[plan.layers]]
layers = [1]                      # dense layers 1..L, as integers or "lo-hi" strings
strategy = "percent"
shares = { a = 50, b = 30, c = 20 }

[[plan.layers]]
layers = [2]
strategy = "count"
counts = { a = 32, b = 32 }

[[plan.layers]]
layers = [3]
strategy = "whole"
partition = "c"
```

Strategies, each with the one key it needs:

- `count`: `counts = { name = n, ... }`; the counts must sum to the layer's width.
- `percent`: `shares = { name = share, ... }`; positive numbers, normalised by
  their sum, rounded by the largest-remainder method (see `distributor`).
- `even`: like `percent` with equal shares; `partitions = [...]` limits it to
  some partitions (default: all of `plan.partitions`).
- `ids`: `ids = { name = [indices or "lo-hi" ranges], ... }`; every neuron of
  the layer must be listed exactly once.
- `whole`: `partition = "name"`; that partition owns the entire layer.

`count`, `percent` and `even` give each partition one contiguous index range,
in the order of `plan.partitions`. A partition that a rule does not name owns no
neuron of that rule's layers. A rule that leaves a partition it names with no
neuron is an error unless the rule sets `allow_empty = true`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from fractions import Fraction
from typing import Any, Mapping

from mpnn_async.errors import ConfigError
from mpnn_async.planning.ids import IndexRun, parse_index_runs
from mpnn_async.planning.naming import validate_partition_names

__all__ = ["LayerRule", "PlanConfig", "Strategy"]


class Strategy(enum.StrEnum):
    """Splitting strategy of a `[plan]` rule."""

    COUNT = "count"
    PERCENT = "percent"
    EVEN = "even"
    IDS = "ids"
    WHOLE = "whole"


# The strategy-specific key of each rule; every other key is common to all rules.
_STRATEGY_KEY = {
    Strategy.COUNT: "counts",
    Strategy.PERCENT: "shares",
    Strategy.EVEN: "partitions",
    Strategy.IDS: "ids",
    Strategy.WHOLE: "partition",
}
_REQUIRED_KEY = {Strategy.COUNT, Strategy.PERCENT, Strategy.IDS, Strategy.WHOLE}
_COMMON_KEYS = ("strategy", "allow_empty")
_PLAN_KEYS = ("partitions", "default", "layers")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerRule:
    """One rule of `[plan]`: a strategy and its per-partition settings.

    Per-partition settings are tuples of `(partition, value)` in the order of
    `plan.partitions`, whatever order the file used.
    """

    # Dotted path of the rule in the config, used in error messages.
    field: str
    strategy: Strategy
    # Dense layers this rule covers, as inclusive runs; empty for the default rule.
    layer_runs: tuple[IndexRun, ...] = ()
    allow_empty: bool = False
    counts: tuple[tuple[str, int], ...] = ()
    shares: tuple[tuple[str, Fraction], ...] = ()
    # Neuron indices as inclusive runs in the order listed, possibly overlapping;
    # `build_plan` checks them against each layer's width.
    ids: tuple[tuple[str, tuple[IndexRun, ...]], ...] = ()
    # Partitions of an `even` rule.
    members: tuple[str, ...] = ()
    # The owner of a `whole` rule.
    partition: str | None = None

    def __post_init__(self) -> None:
        named = {
            Strategy.COUNT: self.counts,
            Strategy.PERCENT: self.shares,
            Strategy.EVEN: self.members,
            Strategy.IDS: self.ids,
            Strategy.WHOLE: self.partition,
        }[self.strategy]
        if not named:
            raise ConfigError(
                self.option_field, "missing", fix=f"strategy {str(self.strategy)!r} needs it"
            )

    def partition_names(self) -> tuple[str, ...]:
        """Return the partitions that this rule names."""
        if self.strategy is Strategy.WHOLE:
            return (self.partition,) if self.partition is not None else ()
        if self.strategy is Strategy.EVEN:
            return self.members
        pairs = {Strategy.COUNT: self.counts, Strategy.PERCENT: self.shares, Strategy.IDS: self.ids}
        return tuple(name for name, _value in pairs[self.strategy])

    @property
    def option_field(self) -> str:
        """Dotted path of the strategy's own key, such as `plan.layers[1].counts`."""
        return f"{self.field}.{_STRATEGY_KEY[self.strategy]}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlanConfig:
    """The parsed `[plan]` table; `build_plan` checks it against a model's widths."""

    partitions: tuple[str, ...]
    rules: tuple[LayerRule, ...] = ()
    default: LayerRule | None = None

    def __post_init__(self) -> None:
        rules = (*self.rules, self.default) if self.default is not None else self.rules
        for rule in rules:
            for name in rule.partition_names():
                if name not in self.partitions:
                    raise ConfigError(
                        rule.option_field,
                        f"unknown partition {name!r}",
                        fix=f"use one of {list(self.partitions)}, or add it to plan.partitions",
                    )

    @classmethod
    def from_dict(cls, data: Any, *, field: str = "plan") -> PlanConfig:
        """Parse a `[plan]` table, raising `ConfigError` that names the bad field."""
        if not isinstance(data, Mapping):
            raise ConfigError(field, "must be a table", fix="write it as [plan]")
        _reject_unknown_keys(data, _PLAN_KEYS, field)
        if "partitions" not in data:
            raise ConfigError(
                f"{field}.partitions", "missing", fix='list the partition names, e.g. ["a", "b"]'
            )
        partitions = validate_partition_names(data["partitions"], f"{field}.partitions")

        default = None
        if "default" in data:
            default = _parse_rule(data["default"], f"{field}.default", partitions, is_default=True)

        raw_rules = data.get("layers", [])
        if not isinstance(raw_rules, list):
            raise ConfigError(
                f"{field}.layers",
                "must be an array of tables",
                fix="write each rule as [[plan.layers]]",
            )
        rules = tuple(
            _parse_rule(raw, f"{field}.layers[{index}]", partitions, is_default=False)
            for index, raw in enumerate(raw_rules)
        )
        if not rules and default is None:
            raise ConfigError(
                field,
                "has no rule",
                fix='add [[plan.layers]] rules or a default such as { strategy = "even" }',
            )
        return cls(partitions=partitions, rules=rules, default=default)


def _parse_rule(
    data: Any, field: str, partitions: tuple[str, ...], *, is_default: bool
) -> LayerRule:
    if not isinstance(data, Mapping):
        raise ConfigError(field, "must be a table", fix='e.g. { strategy = "even" }')
    strategy = _parse_strategy(data, field)
    own_key = _STRATEGY_KEY[strategy]
    allowed = (*_COMMON_KEYS, own_key) if is_default else (*_COMMON_KEYS, "layers", own_key)
    for key in data:
        if key in allowed:
            continue
        if key in _STRATEGY_KEY.values():
            raise ConfigError(
                f"{field}.{key}",
                f"is not used by strategy {str(strategy)!r}",
                fix=f"remove it, or change the strategy to the one that uses {key!r}",
            )
        if key == "layers":
            raise ConfigError(
                f"{field}.layers",
                "is not allowed in the default rule",
                fix="the default covers every layer that no [[plan.layers]] rule lists",
            )
        raise ConfigError(f"{field}.{key}", "unknown key", fix=f"expected one of {list(allowed)}")

    layer_runs: tuple[IndexRun, ...] = ()
    if not is_default:
        if "layers" not in data:
            raise ConfigError(
                f"{field}.layers", "missing", fix="list the dense layers, e.g. [1, 2]"
            )
        layer_runs = _parse_layer_list(data["layers"], f"{field}.layers")

    allow_empty = data.get("allow_empty", False)
    if not isinstance(allow_empty, bool):
        raise ConfigError(f"{field}.allow_empty", f"must be true or false, got {allow_empty!r}")

    options = _parse_options(strategy, data, field, partitions)
    return LayerRule(
        field=field, strategy=strategy, layer_runs=layer_runs, allow_empty=allow_empty, **options
    )


def _parse_strategy(data: Mapping[str, Any], field: str) -> Strategy:
    choices = ", ".join(member.value for member in Strategy)
    if "strategy" not in data:
        raise ConfigError(f"{field}.strategy", "missing", fix=f"use one of {choices}")
    try:
        return Strategy(data["strategy"])
    except ValueError:
        raise ConfigError(
            f"{field}.strategy",
            f"unknown strategy {data['strategy']!r}",
            fix=f"use one of {choices}",
        ) from None


def _parse_options(
    strategy: Strategy, data: Mapping[str, Any], field: str, partitions: tuple[str, ...]
) -> dict[str, Any]:
    key = _STRATEGY_KEY[strategy]
    key_field = f"{field}.{key}"
    if strategy in _REQUIRED_KEY and key not in data:
        raise ConfigError(key_field, "missing", fix=f"strategy {str(strategy)!r} needs {key!r}")

    if strategy is Strategy.WHOLE:
        owner = data[key]
        if owner not in partitions:
            raise ConfigError(
                key_field, f"unknown partition {owner!r}", fix=f"use one of {list(partitions)}"
            )
        return {"partition": owner}

    if strategy is Strategy.EVEN:
        members = data.get(key, list(partitions))
        _check_partition_list(members, key_field, partitions)
        return {"members": tuple(name for name in partitions if name in members)}

    table = _per_partition_table(data[key], key_field, partitions)
    if strategy is Strategy.COUNT:
        counts = {name: _parse_count(value, f"{key_field}.{name}") for name, value in table.items()}
        return {"counts": _in_plan_order(counts, partitions)}
    if strategy is Strategy.PERCENT:
        shares = {name: _parse_share(value, f"{key_field}.{name}") for name, value in table.items()}
        return {"shares": _in_plan_order(shares, partitions)}
    ids = {name: parse_index_runs(value, f"{key_field}.{name}") for name, value in table.items()}
    return {"ids": _in_plan_order(ids, partitions)}


def _per_partition_table(value: Any, field: str, partitions: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(field, "must be a table keyed by partition", fix="e.g. { a = 1, b = 2 }")
    if not value:
        raise ConfigError(field, "is empty", fix="give at least one partition")
    for name in value:
        if name not in partitions:
            raise ConfigError(
                f"{field}.{name}",
                f"unknown partition {name!r}",
                fix=f"use one of {list(partitions)}, or add it to plan.partitions",
            )
    return value


def _check_partition_list(value: Any, field: str, partitions: tuple[str, ...]) -> None:
    if not isinstance(value, list) or not value:
        raise ConfigError(field, "must be a non-empty list of partition names")
    for index, name in enumerate(value):
        if name not in partitions:
            raise ConfigError(
                f"{field}[{index}]",
                f"unknown partition {name!r}",
                fix=f"use one of {list(partitions)}",
            )
        if value.index(name) != index:
            raise ConfigError(f"{field}[{index}]", f"partition {name!r} is listed twice")


def _in_plan_order(
    values: Mapping[str, Any], partitions: tuple[str, ...]
) -> tuple[tuple[str, Any], ...]:
    return tuple((name, values[name]) for name in partitions if name in values)


def _parse_count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(field, f"must be a non-negative integer, got {value!r}")
    return value


def _parse_share(value: Any, field: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            field, f"must be a positive number, got {value!r}", fix="give every share a value > 0"
        )
    # Fraction(float) is exact, so the rounding never depends on float error.
    return Fraction(value)


def _parse_layer_list(value: Any, field: str) -> tuple[IndexRun, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            field, "must be a non-empty list of dense layers", fix='e.g. [1, 2] or ["1-3"]'
        )
    runs = parse_index_runs(value, field, noun="layer")
    for low, _high in runs:
        if low == 0:
            raise ConfigError(
                field,
                "layer 0 is the input, which no partition owns",
                fix="dense layers start at 1",
            )
    return runs


def _reject_unknown_keys(data: Mapping[str, Any], known: tuple[str, ...], field: str) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(f"{field}.{key}", "unknown key", fix=f"expected one of {list(known)}")
