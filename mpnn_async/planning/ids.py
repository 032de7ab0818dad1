"""Neuron index lists as written in configs, and their compact display form.

A config lists neuron indices of one layer as a list whose items are integers
or strings. A string is either one index ("7") or an inclusive range ("0-63"
is the 64 indices 0 to 63).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from mpnn_async.errors import ConfigError

__all__ = [
    "IndexRun",
    "describe_ids",
    "describe_runs",
    "format_ids",
    "format_runs",
    "parse_index_runs",
]

# An inclusive run of indices (low, high), as written in a config.
IndexRun = tuple[int, int]

_RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")

# Past this many runs, format_ids shortens its output so that an error about a
# 4096-neuron layer stays one readable line.
_MAX_RUNS_SHOWN = 8


def parse_index_runs(value: Any, field: str, *, noun: str = "neuron") -> tuple[IndexRun, ...]:
    """Parse a list of indices and "lo-hi" range strings into inclusive runs, in list order.

    Only the syntax is checked here, because the layer width is not known yet.
    The runs stay unexpanded so that the caller can check them against the
    width before it builds any list, and overlaps are kept so that the caller
    can report them. `noun` names what the indices count in error messages
    ("neuron", "layer").
    """
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(
            field,
            f"must be a list of {noun} indices, got {value!r}",
            fix='write e.g. [0, 1, 2] or ["0-31", 40]',
        )
    return tuple(
        _parse_item(item, f"{field}[{position}]", noun) for position, item in enumerate(items)
    )


def _parse_item(item: Any, field: str, noun: str) -> IndexRun:
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise ConfigError(
            field, f"must be an integer or a range string, got {item!r}", fix='e.g. 5 or "0-31"'
        )
    if isinstance(item, int):
        if item < 0:
            raise ConfigError(field, f"{noun} index {item} is negative", fix="indices start at 0")
        return (item, item)
    match = _RANGE.fullmatch(item)
    if match is None:
        raise ConfigError(
            field,
            f"invalid {noun} range {item!r}",
            fix='write "lo-hi" with non-negative integers, e.g. "0-31" (both ends included)',
        )
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if high < low:
        raise ConfigError(field, f"{noun} range {item!r} is reversed", fix=f'write "{high}-{low}"')
    return (low, high)


def format_ids(ids: Iterable[int]) -> str:
    """Format indices as sorted runs, e.g. "0-3, 7, 9-12", shortened when there are many."""
    runs: list[IndexRun] = []
    for index in sorted(set(ids)):
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return format_runs(runs)


def format_runs(runs: Iterable[IndexRun]) -> str:
    """Format inclusive runs in the order given, e.g. "0-3, 7", shortened when there are many."""
    parts = [str(low) if low == high else f"{low}-{high}" for low, high in runs]
    if len(parts) > _MAX_RUNS_SHOWN:
        hidden = len(parts) - _MAX_RUNS_SHOWN
        parts = [*parts[:_MAX_RUNS_SHOWN], f"... ({hidden} more runs)"]
    return ", ".join(parts)


def describe_ids(noun: str, ids: Iterable[int]) -> str:
    """Name indices with their noun, singular or plural: "neuron 6", "neurons 2, 6-9"."""
    ids = sorted(set(ids))
    return f"{noun if len(ids) == 1 else noun + 's'} {format_ids(ids)}"


def describe_runs(noun: str, runs: Iterable[IndexRun]) -> str:
    """Name inclusive runs with their noun, singular or plural, without expanding them."""
    runs = list(runs)
    single = len(runs) == 1 and runs[0][0] == runs[0][1]
    return f"{noun if single else noun + 's'} {format_runs(runs)}"
