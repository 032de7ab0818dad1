"""Reader for IDX files, the format of the MNIST images and labels, gzipped or not.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian uint32 per dimension, then the values in
big-endian C order. The file must contain exactly that many bytes.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mpnn_async.data.files import open_data_file
from mpnn_async.data.samples import as_feature_matrix, as_labels
from mpnn_async.errors import InvalidInputError

__all__ = ["IDX_DTYPES", "load_idx", "read_idx"]

# Type code (third byte of the magic number) -> big-endian element dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_CHUNK_BYTES = 1 << 20


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file into an array of its declared shape, in native byte order.

    Raise InvalidInputError naming the file when the magic number, type code or
    dimensions are invalid, or the data is shorter or longer than they declare.
    """
    path = Path(path)
    with open_data_file(path) as stream:
        magic = _read_exactly(stream, 4, path, "the 4-byte magic number")
        if magic[:2] != b"\x00\x00":
            raise InvalidInputError(
                f"{path}: not an IDX file: magic number 0x{magic.hex()} does not start "
                "with two zero bytes"
            )
        type_code, ndim = magic[2], magic[3]
        if type_code not in IDX_DTYPES:
            known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
            raise InvalidInputError(
                f"{path}: unknown IDX type code 0x{type_code:02X}; expected one of {known}"
            )
        if ndim == 0:
            raise InvalidInputError(f"{path}: IDX header declares 0 dimensions")

        dims_bytes = _read_exactly(stream, 4 * ndim, path, f"{ndim} dimension sizes")
        shape = struct.unpack(f">{ndim}I", dims_bytes)
        dtype = IDX_DTYPES[type_code]
        data_bytes = math.prod(shape) * dtype.itemsize
        body = _read_exactly(stream, data_bytes, path, f"data of shape {shape} ({dtype.name})")
        if stream.read(1):
            raise InvalidInputError(
                f"{path}: has bytes after the {data_bytes} data bytes that shape {shape} "
                f"of {dtype.name} declares"
            )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX images file and its labels file, as MNIST distributes them.

    Returns (x, y): x of shape (samples, pixels) in the file's dtype (uint8 for
    MNIST), flattened from (samples, rows, columns); y as int64 labels.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if labels.dtype.kind not in "iu":
        raise InvalidInputError(
            f"{labels_path}: labels must have an integer IDX type, got {labels.dtype.name}"
        )
    y = as_labels(labels, source=str(labels_path))
    x = as_feature_matrix(images, source=str(images_path))
    if x.shape[0] != y.shape[0]:
        raise InvalidInputError(
            f"{images_path} has {x.shape[0]} images but {labels_path} has {y.shape[0]} labels"
        )
    if x.shape[0] == 0:
        raise InvalidInputError(f"{images_path}: contains no images")
    return x, y


def _read_exactly(stream: BinaryIO, size: int, path: Path, description: str) -> bytearray:
    """Read exactly `size` bytes, in chunks.

    Chunks keep memory at the file's real size when a header declares a huge shape.
    """
    buffer = bytearray()
    while len(buffer) < size:
        chunk = stream.read(min(size - len(buffer), _CHUNK_BYTES))
        if not chunk:
            raise InvalidInputError(
                f"{path}: truncated: {description} needs {size} bytes, but the file ends after "
                f"{len(buffer)} of them"
            )
        buffer += chunk
    return buffer
