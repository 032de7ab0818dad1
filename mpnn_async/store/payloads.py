"""Payload encodings of store files: `.npz` archives for versions, JSON for the rest.

A version payload is an uncompressed `.npz` archive (readable by `numpy.load`;
see `archive`) holding the caller's arrays plus `_header`, a uint8 array of
JSON bytes `{"format": 1, "key": [...], "version": N, "meta": {...}}`. The key
and number inside let a reader check that the file is the version it asked
for. Arrays are written without pickle and object arrays are rejected on
write and on read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mpnn_async.errors import CorruptFileError, InvalidInputError
from mpnn_async.store.archive import ArraySource, write_archive
from mpnn_async.store.names import Key, validate_name

__all__ = [
    "HEADER_ENTRY",
    "check_arrays",
    "decode_json",
    "decode_version_header",
    "encode_json",
    "encode_version",
    "encode_version_header",
    "write_version",
]

VERSION_FORMAT = 1
HEADER_ENTRY = "_header"  # starts with "_", so no valid array name can collide with it


def encode_json(data: Any, *, field: str) -> bytes:
    """Return canonical JSON bytes (sorted keys, no spaces, UTF-8) of `data`.

    Raises InvalidInputError naming `field` when `data` is not plain JSON:
    NaN and infinities are rejected rather than written as non-standard tokens.
    """
    try:
        text = json.dumps(
            data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as error:
        raise InvalidInputError(
            f"invalid {field}: not JSON-serializable ({error}); use dicts, lists, str, "
            "int, finite float, bool and None"
        ) from error
    return text.encode("utf-8")


def decode_json(payload: bytes, *, path: Path) -> dict[str, Any]:
    """Return the JSON object in `payload`, else raise CorruptFileError naming `path`."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CorruptFileError(f"corrupt store file {path}: invalid JSON ({error})") from error
    if not isinstance(data, dict):
        raise CorruptFileError(
            f"corrupt store file {path}: expected a JSON object, got {type(data).__name__}"
        )
    return data


def encode_version(
    key: Key, number: int, arrays: Mapping[str, Any], meta: Mapping[str, Any]
) -> bytes:
    """Encode one version as `.npz` bytes, raising InvalidInputError for invalid arrays or meta."""
    checked = check_arrays(arrays)
    header = encode_version_header(key, number, meta)
    buffer = io.BytesIO()
    write_version(buffer, checked, header)
    return buffer.getvalue()


def write_version(
    stream: BinaryIO, arrays: Mapping[str, np.ndarray | ArraySource], header: bytes
) -> None:
    """Write one version's `.npz` payload to a seekable binary `stream`, array by array.

    `arrays` comes from `check_arrays` and `header` from `encode_version_header`.
    ArraySource values are copied in chunks, so the payload is never in memory whole.
    """
    entries = dict(arrays)
    entries[HEADER_ENTRY] = np.frombuffer(header, dtype=np.uint8)
    write_archive(stream, entries)


def encode_version_header(key: Key, number: int, meta: Mapping[str, Any]) -> bytes:
    """Return the JSON of a version's `_header` entry, raising InvalidInputError for invalid meta."""
    return encode_json(
        {"format": VERSION_FORMAT, "key": list(key), "version": number, "meta": dict(meta)},
        field=f"meta of {'/'.join(key)}",
    )


def check_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray | ArraySource]:
    """Return `arrays` with every value a numpy array or ArraySource; raise InvalidInputError if invalid.

    Values that are neither become arrays through `numpy.asarray`. Names must
    be valid store names, and dtypes holding Python objects are rejected.
    """
    if not isinstance(arrays, Mapping):
        raise InvalidInputError(
            f"invalid arrays: expected a mapping of name to numpy array, got {type(arrays).__name__}"
        )
    checked: dict[str, np.ndarray | ArraySource] = {}
    for name, value in arrays.items():
        validate_name(name, field="array name")
        array = value if isinstance(value, ArraySource) else np.asarray(value)
        if array.dtype.hasobject:
            raise InvalidInputError(
                f"invalid array {name!r}: dtype {array.dtype} contains Python objects, which the "
                "store does not pickle; convert it to a numeric dtype"
            )
        checked[name] = array
    return checked


def decode_version_header(header: bytes, *, path: Path, key: Key, number: int) -> dict[str, Any]:
    """Return the meta of a version's `_header` JSON, checking that it is `key` version `number`."""
    fields = decode_json(header, path=path)
    if fields.get("format") != VERSION_FORMAT:
        raise CorruptFileError(
            f"corrupt store file {path}: format {fields.get('format')!r}, expected {VERSION_FORMAT}"
        )
    if fields.get("key") != list(key) or fields.get("version") != number:
        raise CorruptFileError(
            f"corrupt store file {path}: it contains {fields.get('key')!r} version "
            f"{fields.get('version')!r}, expected {list(key)!r} version {number}"
        )
    meta = fields.get("meta")
    if not isinstance(meta, dict):
        raise CorruptFileError(f"corrupt store file {path}: meta is not a JSON object")
    return meta
