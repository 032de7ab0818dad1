"""The header of a data message: what the block is, where it goes, and its message id."""

from __future__ import annotations

import dataclasses
import enum
import operator
import re
import types
from collections.abc import Mapping
from typing import Any, NamedTuple

from mpnn_async.wire.errors import CodecError, RejectReason
from mpnn_async.wire.jsonvalue import JsonScalar, check_json_scalar

__all__ = [
    "MAX_ID",
    "NAME_PATTERN",
    "SCHEDULER",
    "BlockHeader",
    "ExtraValue",
    "MessageId",
    "MessageKind",
    "describe_json_value",
    "parse_non_negative_int",
    "validate_name",
]

# Job and partition names also appear in routing keys, queue names and file names, so
# they exclude the AMQP wildcards `*` and `#`, path separators and whitespace.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Reserved `source`/`destination` of blocks that the scheduler sends (inputs, output
# gradients) or receives (last-layer activations).
SCHEDULER = "scheduler"

# Largest step, micro-batch, layer or attempt number: the int64 maximum, so that every
# id fits a signed 64-bit integer in any consumer.
MAX_ID = 2**63 - 1

_ID_FIELDS = ("step", "micro_batch", "layer", "attempt")


class MessageKind(enum.StrEnum):
    """Role of a data block in the forward or backward pass."""

    # Forward block: the sender's slice a[l][:, S] of layer l's activations for one micro-batch.
    ACTIVATION = "activation"
    # Backward block: the columns of dLoss/da[l] that belong to the destination partition.
    GRADIENT = "gradient"
    # Forward-only block of an evaluation or serving request; no backward pass follows.
    INFERENCE = "inference"
    # One micro-batch's weight and bias gradients of a layer, from one replica of a
    # partition to the others: the weight gradient with the bias gradient as its last column.
    REPLICA_GRADIENT = "replica_gradient"


class MessageId(NamedTuple):
    """Identity of a data message for duplicate detection.

    A receiver should drop a message whose id it has already seen, and any message whose
    attempt is older than the current attempt of its micro-batch. The destination is not
    part of the id because each receiver deduplicates only what it receives.
    """

    job: str
    step: int
    micro_batch: int
    layer: int
    kind: MessageKind
    source: str
    attempt: int


# A value of `BlockHeader.extra`: a JSON scalar, or a tuple of them (JSON arrays decode to tuples).
ExtraValue = JsonScalar | tuple[JsonScalar, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class BlockHeader:
    """Everything in a data message's header except the array's dtype, shape and size.

    Construction validates every field and raises CodecError naming the field. `kind`
    may be given as its string value, and integer ids as any integer type (NumPy
    integers included); both are stored as MessageKind and int. `extra` is small
    metadata for the receiver, such as row or column ranges: a mapping from str to JSON
    scalars or lists of them. It is stored as a read-only mapping with lists turned into
    tuples, and it is left out of the hash.
    """

    kind: MessageKind
    job: str
    step: int
    micro_batch: int
    # Layer 0 is the network input; layers 1..L are dense layers.
    layer: int
    source: str
    destination: str
    attempt: int = 0
    extra: Mapping[str, ExtraValue] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _parse_kind(self.kind))
        for name in ("job", "source", "destination"):
            validate_name(name, getattr(self, name))
        for name in _ID_FIELDS:
            object.__setattr__(self, name, parse_non_negative_int(name, getattr(self, name)))
        object.__setattr__(self, "extra", _freeze_extra(self.extra))

    def message_id(self) -> MessageId:
        """Return the id that receivers use to drop duplicates and superseded attempts."""
        return MessageId(
            job=self.job,
            step=self.step,
            micro_batch=self.micro_batch,
            layer=self.layer,
            kind=self.kind,
            source=self.source,
            attempt=self.attempt,
        )

    def to_json_fields(self) -> dict[str, Any]:
        """Return the header's JSON fields; `extra` is left out when empty."""
        fields: dict[str, Any] = {
            "kind": self.kind.value,
            "job": self.job,
            "step": self.step,
            "micro_batch": self.micro_batch,
            "layer": self.layer,
            "source": self.source,
            "destination": self.destination,
            "attempt": self.attempt,
        }
        if self.extra:
            fields["extra"] = dict(self.extra)
        return fields

    def __repr__(self) -> str:
        extra = f" extra={dict(self.extra)!r}" if self.extra else ""
        return (
            f"<BlockHeader {self.kind.value} job={self.job} step={self.step} "
            f"mb={self.micro_batch} layer={self.layer} {self.source}->{self.destination} "
            f"attempt={self.attempt}{extra}>"
        )


def validate_name(field: str, value: object) -> None:
    """Raise CodecError unless `value` is a str that matches NAME_PATTERN."""
    if isinstance(value, str) and NAME_PATTERN.fullmatch(value):
        return
    raise CodecError(
        RejectReason.INVALID_FIELD,
        f"{field} = {describe_json_value(value)} is not a valid name: use 1 to 64 characters "
        "from A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or digit",
    )


def describe_json_value(value: object) -> str:
    """Return a short description of a value for error messages, with its type when it matters."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    if isinstance(value, bool):
        return f"{text} (a boolean)"
    if isinstance(value, float):
        return f"{text} (a float)"
    return text


def _parse_kind(value: object) -> MessageKind:
    if not isinstance(value, str):
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"kind = {describe_json_value(value)} is not a string",
        )
    try:
        return MessageKind(value)
    except ValueError:
        known = ", ".join(kind.value for kind in MessageKind)
        raise CodecError(
            RejectReason.UNKNOWN_KIND,
            f"kind = {describe_json_value(value)} is not a known message kind; expected one of {known}",
        ) from None


def parse_non_negative_int(field: str, value: object) -> int:
    """Return `value` as an int from 0 to MAX_ID; raise CodecError for bools, floats, null and others."""
    # bool is a subclass of int, and a JSON encoder writes NaN as null, so both are rejected here.
    number = None
    if not isinstance(value, bool):
        try:
            number = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    if number is None or not 0 <= number <= MAX_ID:
        hint = ""
        if value is None:
            hint = " (a NaN or Infinity written by a JSON encoder arrives as null)"
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"{field} = {describe_json_value(value)}; expected an integer from 0 to 2**63 - 1{hint}",
        )
    return number


def _freeze_extra(extra: object) -> Mapping[str, ExtraValue]:
    if not isinstance(extra, Mapping):
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"extra = {describe_json_value(extra)}; expected an object (dict) of small JSON values",
        )
    frozen: dict[str, ExtraValue] = {}
    for key, value in extra.items():
        if not isinstance(key, str):
            raise CodecError(
                RejectReason.INVALID_FIELD,
                f"extra has a key of type {type(key).__name__} ({key!r}); keys must be strings",
            )
        check_json_scalar(f"key {key!r} of extra", key)
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                check_json_scalar(f"extra.{key}[{index}]", item)
            frozen[key] = tuple(value)
        else:
            check_json_scalar(f"extra.{key}", value)
            frozen[key] = value
    return types.MappingProxyType(frozen)
