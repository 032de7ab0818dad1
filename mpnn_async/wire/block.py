"""The data-message codec: a small JSON header followed by the raw bytes of one array.

Frame layout, integers little-endian:

    offset 0      4 bytes   magic b"MPN1"; the trailing "1" is the frame version
    offset 4      u32       header length H, at most MAX_HEADER_BYTES
    offset 8      H bytes   header: a UTF-8 JSON object written by orjson
    offset 8 + H  nbytes    array body, C order, little-endian

Header fields: the BlockHeader fields (kind, job, step, micro_batch, layer, source,
destination, attempt and the optional extra), plus `dtype` (a key of
SUPPORTED_DTYPES), `shape` (a list of non-negative ints, [] for a 0-d array) and
`nbytes` (the body size, which must equal the element count times the item size).
`nbytes` distinguishes a truncated or padded body from a wrong shape. The decoder
rejects unknown fields, so adding a field requires a new magic.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

import numpy as np

from mpnn_async.wire.buffers import byte_view, check_frame_size
from mpnn_async.wire.errors import CodecError, RejectReason
from mpnn_async.wire.header import (
    BlockHeader,
    describe_json_value,
    parse_non_negative_int,
)
from mpnn_async.wire.jsonvalue import dump_json, load_json_object

__all__ = [
    "BODY_ALIGNMENT_BYTES",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "MAX_NDIM",
    "SUPPORTED_DTYPES",
    "Block",
    "decode_block",
    "encode_block",
    "is_data_frame",
]

MAGIC = b"MPN1"

# Maximum header size. Headers without `extra` take 160 to 470 bytes, depending on name
# lengths, id sizes and dimensions. The limit stops a corrupt length field or an
# oversized `extra` from making the decoder parse megabytes of JSON.
MAX_HEADER_BYTES = 64 * 1024

# Maximum number of array dimensions. NumPy 1.x supports 32 and NumPy 2 supports 64.
MAX_NDIM = 32

# Wire dtype strings (NumPy's `dtype.str`, which states the byte order) and their dtypes.
# Single-byte types have no byte order and use "|".
SUPPORTED_DTYPES: dict[str, np.dtype[Any]] = {
    "<f4": np.dtype("<f4"),  # float32
    "<f8": np.dtype("<f8"),  # float64
    "<i4": np.dtype("<i4"),  # int32
    "<i8": np.dtype("<i8"),  # int64
    "|u1": np.dtype("|u1"),  # uint8
    "|b1": np.dtype("|b1"),  # bool, one byte that must be 0 or 1
}

_PREFIX = struct.Struct("<4sI")
# Encoders pad the header JSON with spaces so the body starts at a multiple of
# this many bytes from the frame's start. CPython 3.11 on 64-bit systems puts a
# bytes object's data 16-byte aligned, so a decoder can then use the body in
# place as an aligned array; `decode_block` copies a body that is not aligned.
BODY_ALIGNMENT_BYTES = 16
_HEADER_FIELDS = frozenset(
    ("kind", "job", "step", "micro_batch", "layer", "source", "destination", "attempt")
)
_ARRAY_FIELDS = frozenset(("dtype", "shape", "nbytes"))
_REQUIRED_FIELDS = _HEADER_FIELDS | _ARRAY_FIELDS
_OPTIONAL_FIELDS = frozenset(("extra",))
# NumPy refuses arrays whose size in bytes, with zero dimensions counted as 1, exceeds this.
_MAX_ARRAY_EXTENT_BYTES = int(np.iinfo(np.intp).max)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Block:
    """A decoded data message: its header and a C-contiguous array (writable unless decoded in place)."""

    header: BlockHeader
    array: np.ndarray

    def __repr__(self) -> str:
        return f"<Block {self.array.dtype.str}{list(self.array.shape)} {self.header!r}>"


def is_data_frame(data: bytes | bytearray | memoryview) -> bool:
    """Return True if `data` starts with the data magic (control messages start with `{`)."""
    return byte_view(data)[: len(MAGIC)].tobytes() == MAGIC


def encode_block(header: BlockHeader, array: np.ndarray) -> bytes:
    """Encode a header and an array as one data frame.

    The array must have a dtype listed in SUPPORTED_DTYPES, in either byte order. A
    NumPy scalar is encoded as a 0-d array. The array bytes are copied once into the
    frame, and a non-contiguous or big-endian array is copied once more before that.
    Raises CodecError if the dtype is not supported, the array has more than MAX_NDIM
    dimensions, or the header JSON exceeds MAX_HEADER_BYTES.
    """
    if not isinstance(header, BlockHeader):
        raise TypeError(f"header must be a BlockHeader, got {type(header).__name__}")
    wire_array = _to_wire_array(array)

    fields = header.to_json_fields()
    fields["dtype"] = wire_array.dtype.str
    fields["shape"] = list(wire_array.shape)
    fields["nbytes"] = wire_array.nbytes
    header_json = dump_json(fields, what="block header")
    header_json += b" " * (-(_PREFIX.size + len(header_json)) % BODY_ALIGNMENT_BYTES)
    if len(header_json) > MAX_HEADER_BYTES:
        raise CodecError(
            RejectReason.HEADER_TOO_LARGE,
            f"the encoded header is {len(header_json)} bytes, above the limit of "
            f"{MAX_HEADER_BYTES}; move large metadata out of `extra`",
        )

    # join copies the array bytes into the frame. For a C-contiguous little-endian
    # array this is the only copy; other arrays were copied once more by _to_wire_array.
    return b"".join((_PREFIX.pack(MAGIC, len(header_json)), header_json, wire_array.data))


def decode_block(
    data: bytes | bytearray | memoryview, *, max_size_bytes: int, copy: bool = True
) -> Block:
    """Decode and validate one data frame.

    Raises CodecError, with the RejectReason and the field at fault, for anything
    invalid. The frame size is checked against `max_size_bytes` before anything else is
    read. The returned array is a writable C-contiguous copy that shares no memory
    with `data`. With `copy=False` and an immutable `bytes` frame whose body is
    aligned for the dtype, it is a read-only view of the body instead, which keeps
    `data` alive. A receiver that keeps the frame anyway (until it acknowledges the
    message) then keeps the array's bytes once instead of twice.
    """
    view = byte_view(data)
    check_frame_size(view, max_size_bytes=max_size_bytes, what="data frame")
    body_start = _read_prefix(view)

    fields = load_json_object(view[_PREFIX.size : body_start], what="block header")
    header, dtype, shape, nbytes = _parse_fields(fields)

    body_bytes = view.nbytes - body_start
    if body_bytes < nbytes:
        raise CodecError(
            RejectReason.TRUNCATED_BODY,
            f"body is {body_bytes} bytes but the header announces nbytes = {nbytes}",
        )
    if body_bytes > nbytes:
        raise CodecError(
            RejectReason.TRAILING_BYTES,
            f"body is {body_bytes} bytes, {body_bytes - nbytes} more than the header's nbytes = {nbytes}",
        )
    # Only an immutable frame can back the array: a bytearray's owner could overwrite it.
    in_place = not copy and isinstance(data, bytes)
    return Block(header=header, array=_body_array(view, body_start, dtype, shape, copy=not in_place))


def _to_wire_array(array: object) -> np.ndarray:
    if isinstance(array, np.generic):
        array = np.asarray(array)
    if not isinstance(array, np.ndarray) or isinstance(array, np.ma.MaskedArray):
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"array has type {type(array).__name__}; expected a numpy.ndarray "
            "(convert with numpy.asarray, or fill a masked array with .filled())",
        )
    wire_dtype = array.dtype.newbyteorder("<")
    if wire_dtype.str not in SUPPORTED_DTYPES:
        raise CodecError(
            RejectReason.UNSUPPORTED_DTYPE,
            f"array dtype {array.dtype.str} ({array.dtype.name}) is not supported; "
            f"supported: {_supported_dtype_list()}",
        )
    if array.ndim > MAX_NDIM:
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"array has {array.ndim} dimensions; at most {MAX_NDIM} are supported",
        )
    # Copies only when the array is not C-contiguous or not little-endian.
    return array.astype(wire_dtype, order="C", copy=False)


def _read_prefix(view: memoryview) -> int:
    """Check the magic and header length; return the offset where the body starts."""
    if view[: len(MAGIC)].tobytes() != MAGIC:
        if view.nbytes < len(MAGIC) and MAGIC.startswith(view.tobytes()):
            raise CodecError(
                RejectReason.TRUNCATED_HEADER,
                f"frame is {view.nbytes} bytes, shorter than the {_PREFIX.size}-byte prefix",
            )
        hint = " (it looks like a JSON control message)" if view[:1].tobytes() == b"{" else ""
        raise CodecError(
            RejectReason.BAD_MAGIC,
            f"frame starts with {view[: len(MAGIC)].tobytes()!r}, not the data magic {MAGIC!r}{hint}",
        )
    if view.nbytes < _PREFIX.size:
        raise CodecError(
            RejectReason.TRUNCATED_HEADER,
            f"frame is {view.nbytes} bytes, shorter than the {_PREFIX.size}-byte prefix",
        )
    header_length: int = _PREFIX.unpack_from(view)[1]
    if header_length > MAX_HEADER_BYTES:
        raise CodecError(
            RejectReason.HEADER_TOO_LARGE,
            f"header length field is {header_length}, above the limit of {MAX_HEADER_BYTES} bytes",
        )
    body_start = _PREFIX.size + header_length
    if body_start > view.nbytes:
        raise CodecError(
            RejectReason.TRUNCATED_HEADER,
            f"header length field is {header_length} but only "
            f"{view.nbytes - _PREFIX.size} bytes follow the prefix",
        )
    return body_start


def _parse_fields(
    fields: dict[str, Any],
) -> tuple[BlockHeader, np.dtype[Any], tuple[int, ...], int]:
    missing = _REQUIRED_FIELDS - fields.keys()
    if missing:
        raise CodecError(
            RejectReason.MISSING_FIELD,
            f"block header has no {', '.join(sorted(missing))}",
        )
    unknown = fields.keys() - _REQUIRED_FIELDS - _OPTIONAL_FIELDS
    if unknown:
        raise CodecError(
            RejectReason.UNKNOWN_FIELD,
            f"block header has unknown field(s) {', '.join(sorted(map(repr, unknown)))}; "
            f"frame version {MAGIC!r} defines only "
            f"{', '.join(sorted(_REQUIRED_FIELDS | _OPTIONAL_FIELDS))}",
        )

    header = BlockHeader(
        **{name: fields[name] for name in _HEADER_FIELDS},
        extra=fields.get("extra", {}),
    )
    dtype = _parse_dtype(fields["dtype"])
    shape = _parse_shape(fields["shape"], dtype)
    nbytes = parse_non_negative_int("nbytes", fields["nbytes"])
    expected_nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != expected_nbytes:
        raise CodecError(
            RejectReason.SHAPE_MISMATCH,
            f"nbytes = {nbytes} but shape {list(shape)} of dtype {dtype.str} "
            f"takes {expected_nbytes} bytes",
        )
    return header, dtype, shape, nbytes


def _parse_dtype(value: object) -> np.dtype[Any]:
    if not isinstance(value, str):
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"dtype = {describe_json_value(value)} is not a string",
        )
    dtype = SUPPORTED_DTYPES.get(value)
    if dtype is None:
        raise CodecError(
            RejectReason.UNSUPPORTED_DTYPE,
            f"dtype = {describe_json_value(value)} is not supported; supported: {_supported_dtype_list()}",
        )
    return dtype


def _parse_shape(value: object, dtype: np.dtype[Any]) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"shape = {describe_json_value(value)} is not a list of integers",
        )
    if len(value) > MAX_NDIM:
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"shape has {len(value)} dimensions; at most {MAX_NDIM} are supported",
        )
    shape = tuple(parse_non_negative_int(f"shape[{index}]", size) for index, size in enumerate(value))
    # NumPy refuses a shape such as [0, 2**62] even though the array is empty.
    extent_bytes = math.prod(max(size, 1) for size in shape) * dtype.itemsize
    if extent_bytes > _MAX_ARRAY_EXTENT_BYTES:
        raise CodecError(
            RejectReason.INVALID_FIELD,
            f"shape {list(shape)} is too large for a NumPy array of dtype {dtype.str}",
        )
    return shape


def _body_array(
    view: memoryview, body_start: int, dtype: np.dtype[Any], shape: tuple[int, ...], *, copy: bool
) -> np.ndarray:
    element_count = math.prod(shape)
    if dtype.kind == "b":
        # Any byte other than 0 or 1 is an invalid NumPy bool and makes comparisons unreliable.
        raw = np.frombuffer(view, dtype=np.uint8, count=element_count, offset=body_start)
        if element_count and int(raw.max()) > 1:
            raise CodecError(
                RejectReason.INVALID_VALUE,
                "bool body contains a byte other than 0 or 1",
            )
    # frombuffer makes a read-only view of the frame. The copy is the one copy on decode,
    # so the result is writable and does not keep the frame's memory alive.
    flat = np.frombuffer(view, dtype=dtype, count=element_count, offset=body_start)
    if not copy and flat.flags.aligned:
        return flat.reshape(shape)
    return flat.reshape(shape).copy(order="C")


def _supported_dtype_list() -> str:
    return ", ".join(f"{code} ({dtype.name})" for code, dtype in SUPPORTED_DTYPES.items())
