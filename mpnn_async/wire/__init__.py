"""Wire formats: binary data frames (a JSON header plus one array) and JSON control messages.

Nothing received is unpickled or evaluated. Headers are JSON read by orjson, and
arrays are raw little-endian bytes with an explicit dtype and shape. Every decoder
error is a CodecError whose `reason` (a RejectReason) can go into a dead-letter header.
"""

from mpnn_async.wire.block import (
    BODY_ALIGNMENT_BYTES,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_NDIM,
    SUPPORTED_DTYPES,
    Block,
    decode_block,
    encode_block,
    is_data_frame,
)
from mpnn_async.wire.control import ControlMessage, decode_control, encode_control
from mpnn_async.wire.errors import CodecError, RejectReason
from mpnn_async.wire.header import (
    MAX_ID,
    NAME_PATTERN,
    SCHEDULER,
    BlockHeader,
    MessageId,
    MessageKind,
    validate_name,
)
from mpnn_async.wire.jsonvalue import MAX_JSON_DEPTH

__all__ = [
    "BODY_ALIGNMENT_BYTES",
    "MAGIC",
    "MAX_HEADER_BYTES",
    "MAX_ID",
    "MAX_JSON_DEPTH",
    "MAX_NDIM",
    "NAME_PATTERN",
    "SCHEDULER",
    "SUPPORTED_DTYPES",
    "Block",
    "BlockHeader",
    "CodecError",
    "ControlMessage",
    "MessageId",
    "MessageKind",
    "RejectReason",
    "decode_block",
    "decode_control",
    "encode_block",
    "encode_control",
    "is_data_frame",
    "validate_name",
]
