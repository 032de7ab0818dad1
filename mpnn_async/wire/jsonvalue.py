"""Checks and orjson calls shared by the block header and the control-message codecs.

Both codecs accept only plain JSON values: str, int, float, bool, None, and (in
control messages) dicts with str keys and lists. The checks exist because orjson
writes NaN and Infinity as null, raises TypeError for integers outside the
64-bit range, and serializes dataclasses, datetimes and UUIDs that a peer could
not read back as the same type.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from mpnn_async.wire.errors import CodecError, RejectReason

__all__ = [
    "MAX_JSON_DEPTH",
    "JsonScalar",
    "check_json_scalar",
    "check_json_tree",
    "dump_json",
    "json_type_name",
    "load_json_object",
]

JsonScalar = str | int | float | bool | None

# Maximum nesting of lists and objects in a control payload. orjson 3.13 writes up to 254
# levels and reads up to 1024, more than Python's default recursion limit of 1000 allows
# for code that walks the result recursively.
MAX_JSON_DEPTH = 32

# orjson writes integers from -2**63 up to 2**64 - 1, and reads larger ones as floats.
_MIN_JSON_INT = -(2**63)
_MAX_JSON_INT = 2**64 - 1


def check_json_scalar(field: str, value: object) -> None:
    """Raise CodecError unless `value` is a JSON scalar that orjson writes and reads back unchanged."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_utf8(field, value)
        return
    if isinstance(value, int):
        if not _MIN_JSON_INT <= value <= _MAX_JSON_INT:
            raise CodecError(
                RejectReason.INVALID_FIELD,
                f"{field} = {value} is outside the 64-bit range [-2**63, 2**64 - 1] that JSON "
                "integers on the wire allow; send it as a string",
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CodecError(
                RejectReason.NON_FINITE,
                f"{field} = {value!r}; NaN and Infinity are not allowed in message JSON "
                "because orjson would write them as null",
            )
        # orjson writes subclasses of int and str but not of float, such as numpy.float64.
        if type(value) is float:
            return
    raise CodecError(
        RejectReason.INVALID_FIELD,
        f"{field} has type {type(value).__name__}; expected a JSON scalar "
        "(str, int, float, bool or None); convert NumPy scalars with .item()",
    )


def check_json_tree(field: str, value: object, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise CodecError unless `value` is a JSON value of dicts with str keys, lists, tuples and scalars.

    The walk uses an explicit stack and stops at `max_depth`, so deep nesting or a
    container that contains itself raises CodecError instead of RecursionError.
    """
    stack: list[tuple[str, object, int]] = [(field, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)) and depth >= max_depth:
            raise CodecError(
                RejectReason.INVALID_FIELD,
                f"{path} is nested deeper than {max_depth} levels of lists and objects",
            )
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise CodecError(
                        RejectReason.INVALID_FIELD,
                        f"{path} has a key of type {type(key).__name__} ({key!r}); "
                        "JSON object keys must be strings",
                    )
                _check_utf8(f"key {key!r} of {path}", key)
                stack.append((f"{path}.{key}", child, depth + 1))
        elif isinstance(item, (list, tuple)):
            for index, child in enumerate(item):
                stack.append((f"{path}[{index}]", child, depth + 1))
        else:
            check_json_scalar(path, item)


def dump_json(value: Any, *, what: str) -> bytes:
    """Serialize a value that the checks above accepted; raise CodecError if orjson still fails."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as error:
        raise CodecError(RejectReason.INVALID_FIELD, f"{what} cannot be written as JSON: {error}") from error


def load_json_object(data: bytes | bytearray | memoryview, *, what: str) -> dict[str, Any]:
    """Parse `data` as a JSON object; raise CodecError with BAD_JSON or NOT_OBJECT otherwise."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise CodecError(RejectReason.BAD_JSON, f"{what} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise CodecError(
            RejectReason.NOT_OBJECT,
            f"{what} is a JSON {json_type_name(value)}; expected a JSON object",
        )
    return value


def json_type_name(value: object) -> str:
    """Return the JSON name of a parsed value's type ("null", "boolean", "number", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_utf8(field: str, value: str) -> None:
    # Lone surrogates ("\ud800") are valid in a Python str but have no UTF-8 encoding.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"{field} contains a character that UTF-8 cannot encode ({error.reason})",
        ) from error
