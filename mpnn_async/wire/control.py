"""The control-message codec: a JSON object whose `type` field names the message.

Control messages (heartbeats, step commands, job status and the like) are small
orjson objects such as `{"type": "heartbeat", "worker": "w1"}`. A receiver
distinguishes them from data frames by the first bytes, because JSON objects start
with `{` and data frames with MAGIC (see `is_data_frame`). This module checks only the envelope. The
runtime that defines each control type validates that type's fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mpnn_async.wire.block import MAGIC, is_data_frame
from mpnn_async.wire.buffers import byte_view, check_frame_size
from mpnn_async.wire.errors import CodecError, RejectReason
from mpnn_async.wire.header import describe_json_value, validate_name
from mpnn_async.wire.jsonvalue import (
    MAX_JSON_DEPTH,
    check_json_tree,
    dump_json,
    load_json_object,
)

__all__ = ["ControlMessage", "decode_control", "encode_control", "is_data_frame"]


@dataclasses.dataclass(frozen=True, slots=True)
class ControlMessage:
    """A decoded control message: its type and the other fields of the JSON object."""

    kind: str
    payload: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)


def encode_control(kind: str, payload: Mapping[str, Any]) -> bytes:
    """Encode a control message as the JSON object `{"type": kind, **payload}`.

    `kind` must match NAME_PATTERN. Payload values may be JSON scalars, lists, tuples
    and dicts with str keys, nested at most MAX_JSON_DEPTH levels. Raises CodecError
    for anything else, for NaN or Infinity anywhere (reason NON_FINITE), and for a
    payload that has its own "type" key.
    """
    validate_name("type", kind)
    if not isinstance(payload, Mapping):
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"payload = {describe_json_value(payload)}; expected a dict of JSON values",
        )
    if "type" in payload:
        raise CodecError(
            RejectReason.INVALID_FIELD,
            "payload has a 'type' key, which would replace the message type; rename that key",
        )
    check_json_tree("payload", payload, max_depth=MAX_JSON_DEPTH)
    return dump_json({"type": kind, **payload}, what="control message")


def decode_control(data: bytes | bytearray | memoryview, *, max_size_bytes: int) -> ControlMessage:
    """Decode and validate the envelope of one control message.

    Raises CodecError if the message is larger than `max_size_bytes` (checked first),
    is a data frame, is not a JSON object, has no string `type` matching NAME_PATTERN,
    contains NaN or Infinity, or nests deeper than MAX_JSON_DEPTH.
    """
    view = byte_view(data)
    check_frame_size(view, max_size_bytes=max_size_bytes, what="control message")
    if is_data_frame(view):
        raise CodecError(
            RejectReason.BAD_JSON,
            f"message starts with the data magic {MAGIC!r}; decode it with decode_block",
        )

    fields = load_json_object(view, what="control message")
    if "type" not in fields:
        raise CodecError(RejectReason.MISSING_FIELD, "control message has no 'type' field")
    kind = fields.pop("type")
    validate_name("type", kind)
    check_json_tree("payload", fields, max_depth=MAX_JSON_DEPTH)
    return ControlMessage(kind=kind, payload=fields)
