"""Partition names and the routing keys derived from them.

Routing keys are relative to a job. The runtime prefixes the job name, so data
for partition `a` of job `j7` travels with the key `j7.part.a`, and data for the
scheduler with `j7.sched`. A partition's queue binds the keys that
`partition_bindings` returns, behind the job name or a `*` wildcard that matches
any job, so it receives only the messages addressed to it.

Partition names may contain dots, which AMQP topic exchanges treat as word
separators. That is harmless because every word after the job must match
exactly. A `*` binding matches one word, so it works only for job names
without dots.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from mpnn_async.errors import ConfigError

__all__ = [
    "PARTITION_NAME_PATTERN",
    "SCHEDULER",
    "partition_bindings",
    "partition_routing_key",
    "scheduler_routing_key",
    "validate_partition_name",
    "validate_partition_names",
]

# A partition name: a letter or digit, then up to 63 letters, digits, `_`, `.` or `-`.
PARTITION_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# The peer that feeds the input, computes the loss and sends the output
# gradient. Metadata such as `Plan.forward_sources` names it next to partitions,
# so no partition may take this name.
SCHEDULER = "scheduler"

_PARTITION_KEY_PREFIX = "part."
_SCHEDULER_KEY = "sched"


def validate_partition_name(name: Any, field: str) -> str:
    """Return `name` if it is a valid partition name, else raise `ConfigError` naming `field`."""
    if not isinstance(name, str):
        raise ConfigError(field, f"partition name must be a string, got {name!r}")
    if PARTITION_NAME_PATTERN.fullmatch(name) is None:
        raise ConfigError(
            field,
            f"invalid partition name {name!r}",
            fix="start with a letter or digit, then use up to 63 letters, digits, '_', '.' or '-'",
        )
    if name == SCHEDULER:
        raise ConfigError(
            field, f"partition name {SCHEDULER!r} is reserved", fix="choose another name"
        )
    return name


def validate_partition_names(names: Any, field: str) -> tuple[str, ...]:
    """Validate a non-empty list of distinct partition names and return it as a tuple."""
    if not isinstance(names, Sequence) or isinstance(names, str):
        raise ConfigError(field, "must be a list of partition names", fix='e.g. ["a", "b", "c"]')
    if not names:
        raise ConfigError(field, "is empty", fix="name at least one partition")
    seen: set[str] = set()
    for index, name in enumerate(names):
        validate_partition_name(name, f"{field}[{index}]")
        if name in seen:
            raise ConfigError(
                f"{field}[{index}]", f"partition {name!r} is listed twice", fix="remove the copy"
            )
        seen.add(name)
    return tuple(names)


def partition_routing_key(partition: str) -> str:
    """Return the job-relative routing key of data addressed to `partition`."""
    return _PARTITION_KEY_PREFIX + partition


def scheduler_routing_key() -> str:
    """Return the job-relative routing key of data addressed to the scheduler."""
    return _SCHEDULER_KEY


def partition_bindings(partition: str) -> tuple[str, ...]:
    """Return the job-relative routing keys that the queue of `partition` binds."""
    return (partition_routing_key(partition),)
