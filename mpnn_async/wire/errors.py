"""Rejection reasons of the wire codecs and the error that carries them."""

from __future__ import annotations

import enum

from mpnn_async.errors import InvalidInputError

__all__ = ["CodecError", "RejectReason"]


class RejectReason(enum.StrEnum):
    """Cause of a rejected message. The value goes into the dead-letter headers."""

    # The frame does not start with the data magic (a control message is JSON and starts with `{`).
    BAD_MAGIC = "bad_magic"
    # The frame ends inside the 8-byte prefix (magic and header length) or inside the header.
    TRUNCATED_HEADER = "truncated_header"
    # The header length (or an encoded header) is above MAX_HEADER_BYTES.
    HEADER_TOO_LARGE = "header_too_large"
    # The header or control body is not valid UTF-8 JSON.
    BAD_JSON = "bad_json"
    # The JSON is valid but its top level is not an object.
    NOT_OBJECT = "not_object"
    # A required field is absent.
    MISSING_FIELD = "missing_field"
    # A field that this frame version does not define is present.
    UNKNOWN_FIELD = "unknown_field"
    # A field has the wrong type or an invalid value: a bool or float where an integer is
    # required, a negative id, null, a name outside the allowed pattern, a malformed shape.
    INVALID_FIELD = "invalid_field"
    # The `kind` field is a string but not a MessageKind value.
    UNKNOWN_KIND = "unknown_kind"
    # The dtype is not one of SUPPORTED_DTYPES (or an array to encode has another dtype).
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    # The header's `nbytes` is not the byte size that its shape and dtype give.
    SHAPE_MISMATCH = "shape_mismatch"
    # The body is shorter than the header's `nbytes`.
    TRUNCATED_BODY = "truncated_body"
    # The body is longer than the header's `nbytes`.
    TRAILING_BYTES = "trailing_bytes"
    # The body contains a value its dtype does not allow: a bool byte other than 0 or 1.
    INVALID_VALUE = "invalid_value"
    # The whole frame is larger than the receiver's max_size_bytes.
    OVERSIZED = "oversized"
    # NaN or Infinity where only finite numbers are allowed. The codecs raise it for header
    # and control values, because orjson would write them as null. The runtime can raise it
    # for arrays that must be finite.
    NON_FINITE = "non_finite"


class CodecError(InvalidInputError):
    """A message could not be encoded or decoded.

    `reason` is the machine-readable cause and `detail` the human-readable message,
    which names the field and value at fault.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")
