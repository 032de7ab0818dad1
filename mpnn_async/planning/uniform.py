"""One strategy for every layer, written as a short string (the `--strategy` option).

- `even` (alias `count`): split each layer into contiguous ranges as evenly as
  possible; the earlier partitions get the extra neurons.
- `percent:50,30,20`: the same shares for every layer, one per partition in
  order, rounded by the largest-remainder method.
- `layers`: each partition owns whole layers, in contiguous blocks of layers
  as even as possible (4 layers among 3 partitions: 1-2, 3, 4).

Explicit neuron ids have no short form; write them in the config's `[plan]`.
Partitions may end up with no neuron in some layers (a 10-neuron layer among
16 partitions), but every partition must own some neuron of the model.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

from mpnn_async.errors import ConfigError
from mpnn_async.planning.distributor import contiguous_ranges, largest_remainder_counts
from mpnn_async.planning.naming import validate_partition_name
from mpnn_async.planning.plan_config import LayerRule, PlanConfig, Strategy

__all__ = ["STRATEGY_CHOICES", "parse_partitions_option", "uniform_plan_config"]

STRATEGY_CHOICES = "even, count, percent:S1,S2,..., layers"
_FIELD = "--strategy"


def parse_partitions_option(text: str) -> tuple[str, ...]:
    """Parse `--partitions`: a count N (partitions p1..pN) or comma-separated names."""
    field = "--partitions"
    stripped = text.strip()
    if stripped.isdecimal():
        count = int(stripped)
        if count < 1:
            raise ConfigError(field, f"must be at least 1, got {count}")
        return tuple(f"p{number}" for number in range(1, count + 1))
    names = [name.strip() for name in stripped.split(",")]
    for name in names:
        validate_partition_name(name, field)
        if names.count(name) > 1:
            raise ConfigError(field, f"partition {name!r} is listed twice", fix="remove the copy")
    return tuple(names)


def uniform_plan_config(strategy: str, partitions: Sequence[str], *, depth: int) -> PlanConfig:
    """Build a `PlanConfig` that applies one strategy string to all `depth` layers."""
    partitions = tuple(partitions)
    kind, _, argument = strategy.strip().partition(":")
    kind = kind.strip().lower()

    if kind in ("even", "count"):
        _reject_argument(kind, argument)
        rule = LayerRule(field=_FIELD, strategy=Strategy.EVEN, members=partitions, allow_empty=True)
        return PlanConfig(partitions=partitions, default=rule)

    if kind == "percent":
        shares = _parse_shares(argument, len(partitions))
        rule = LayerRule(
            field=_FIELD,
            strategy=Strategy.PERCENT,
            shares=tuple(zip(partitions, shares, strict=True)),
            allow_empty=True,
        )
        return PlanConfig(partitions=partitions, default=rule)

    if kind == "layers":
        _reject_argument(kind, argument)
        return PlanConfig(partitions=partitions, rules=_whole_layer_blocks(partitions, depth))

    if kind == "ids":
        raise ConfigError(
            _FIELD,
            "strategy 'ids' has no command-line form",
            fix="write the ids in the config's [plan] table and drop --strategy",
        )
    raise ConfigError(
        _FIELD, f"unknown strategy {strategy!r}", fix=f"use one of {STRATEGY_CHOICES}"
    )


def _reject_argument(kind: str, argument: str) -> None:
    if argument:
        raise ConfigError(_FIELD, f"strategy {kind!r} takes no argument, got {argument!r}")


def _parse_shares(argument: str, partition_count: int) -> list[Fraction]:
    if not argument.strip():
        raise ConfigError(_FIELD, "percent needs shares", fix="write e.g. percent:50,30,20")
    shares = []
    for text in argument.split(","):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(
                _FIELD, f"share {text.strip()!r} is not a number", fix="write e.g. percent:50,30,20"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(_FIELD, f"share {text.strip()!r} must be a positive number")
        shares.append(Fraction(value))
    if len(shares) != partition_count:
        raise ConfigError(
            _FIELD,
            f"{len(shares)} shares for {partition_count} partitions",
            fix="give one share per partition, in the order of --partitions",
        )
    return shares


def _whole_layer_blocks(partitions: tuple[str, ...], depth: int) -> tuple[LayerRule, ...]:
    if len(partitions) > depth:
        raise ConfigError(
            "--partitions",
            f"{len(partitions)} partitions but the model has only {depth} dense layers",
            fix=f"strategy 'layers' needs at most {depth} partitions",
        )
    counts = largest_remainder_counts(depth, [1] * len(partitions))
    blocks = contiguous_ranges(list(zip(partitions, counts, strict=True)))
    return tuple(
        LayerRule(
            field=_FIELD,
            strategy=Strategy.WHOLE,
            layer_runs=((block.start + 1, block.stop),),
            partition=name,
        )
        for name, block in blocks.items()
    )
