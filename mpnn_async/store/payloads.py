"""Payload encodings of store files: `.npz` archives for versions, JSON for the rest.

A version payload is an uncompressed `.npz` archive (readable by `numpy.load`)
holding the caller's arrays plus `_header`, a uint8 array of JSON bytes
`{"format": 1, "key": [...], "version": N, "meta": {...}}`. The key and number
inside let a reader check that the file is the version it asked for. Arrays
are written without pickle and loaded with `allow_pickle=False`, so object
arrays are rejected on write and never executed on read.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mpnn_async.errors import CorruptFileError, InvalidInputError
from mpnn_async.store.names import Key, validate_name

__all__ = [
    "decode_json",
    "decode_version",
    "encode_json",
    "encode_version",
]

VERSION_FORMAT = 1
_HEADER_ENTRY = "_header"  # starts with "_", so no valid array name can collide with it


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
    checked = _check_arrays(arrays)
    header = encode_json(
        {"format": VERSION_FORMAT, "key": list(key), "version": number, "meta": dict(meta)},
        field=f"meta of {'/'.join(key)}",
    )
    checked[_HEADER_ENTRY] = np.frombuffer(header, dtype=np.uint8)

    # The same archive layout that numpy.savez writes, built by hand because
    # savez takes array names as keyword arguments, which clash with its own
    # parameters `file` and `allow_pickle`.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in checked.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)
    return buffer.getvalue()


def _check_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise InvalidInputError(
            f"invalid arrays: expected a mapping of name to numpy array, got {type(arrays).__name__}"
        )
    checked: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        validate_name(name, field="array name")
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise InvalidInputError(
                f"invalid array {name!r}: dtype {array.dtype} contains Python objects, which the "
                "store does not pickle; convert it to a numeric dtype"
            )
        checked[name] = array
    return checked


_NPY_HEADER_LOCK = threading.Lock()


def decode_version(
    payload: bytes, *, path: Path, key: Key, number: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode a version payload into (arrays, meta), checking that it is `key` version `number`."""
    try:
        # NOTE: numpy parses each .npy header with ast.literal_eval, and CPython 3.11.7
        # can fail with "SystemError: AST constructor recursion depth mismatch" when two
        # threads do that at once (seen in this project's worker threads), so loads are
        # serialized. A load from memory is short next to the store's file I/O.
        with _NPY_HEADER_LOCK, np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise CorruptFileError(f"corrupt store file {path}: unreadable .npz ({error})") from error

    header_array = arrays.pop(_HEADER_ENTRY, None)
    if header_array is None or header_array.dtype != np.uint8:
        raise CorruptFileError(f"corrupt store file {path}: no uint8 {_HEADER_ENTRY} entry")
    header = decode_json(header_array.tobytes(), path=path)
    if header.get("format") != VERSION_FORMAT:
        raise CorruptFileError(
            f"corrupt store file {path}: format {header.get('format')!r}, expected {VERSION_FORMAT}"
        )
    if header.get("key") != list(key) or header.get("version") != number:
        raise CorruptFileError(
            f"corrupt store file {path}: it contains {header.get('key')!r} version "
            f"{header.get('version')!r}, expected {list(key)!r} version {number}"
        )
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise CorruptFileError(f"corrupt store file {path}: meta is not a JSON object")
    return arrays, meta
