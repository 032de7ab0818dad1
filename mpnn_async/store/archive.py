"""Uncompressed `.npz` archives written to and read from a file in place.

A version payload is the archive that `numpy.savez` writes: one ZIP entry
`<name>.npy` per array, stored without compression. Writing streams each
array's bytes into the entry, so the archive is never built in memory.
Reading locates each array's bytes through the ZIP directory and the `.npy`
headers, so a caller can read one array, or copy it elsewhere in chunks,
without loading the rest.

Nothing is unpickled: an entry whose dtype contains Python objects is
rejected, as `numpy.load(..., allow_pickle=False)` would reject it.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import numpy as np

from mpnn_async.errors import CorruptFileError

__all__ = ["ArraySource", "StoredArray", "read_index", "write_archive"]

# Bytes handed to one write of a ZIP entry.
_WRITE_CHUNK_BYTES = 4 << 20
# A ZIP local file header: signature, versions, flags, method, time, date,
# CRC-32, sizes, then the lengths of the file name and of the extra field.
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"

# NOTE: numpy parses each .npy header with ast.literal_eval, and CPython 3.11.7
# can fail with "SystemError: AST constructor recursion depth mismatch" when two
# threads do that at once (seen in this project's worker threads), so header
# parsing is serialized. The array bytes are read outside this lock.
_NPY_HEADER_LOCK = threading.Lock()


@runtime_checkable
class ArraySource(Protocol):
    """An array that is not in memory: its dtype, its shape and its bytes in C order, in chunks."""

    @property
    def dtype(self) -> np.dtype[Any]: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    def chunks(self) -> Iterator[memoryview]:
        """Yield the array's bytes in C order; each chunk may be reused after the next is requested."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class StoredArray:
    """The location, dtype and shape of one array's bytes in an archive."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    # Offset of the array's first byte from the start of the archive.
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def write_archive(stream: BinaryIO, arrays: Mapping[str, np.ndarray | ArraySource]) -> None:
    """Write `arrays` as an uncompressed `.npz` archive to a seekable binary `stream`.

    An ndarray that is C-contiguous is written from its own memory in chunks;
    any other ndarray goes through `numpy.lib.format.write_array`, which writes
    it in chunks too. The bytes equal those of `numpy.savez` for the same arrays.
    """
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                if isinstance(array, np.ndarray) and not array.flags.c_contiguous:
                    np.lib.format.write_array(entry, array, allow_pickle=False)
                    continue
                _write_header(entry, array.dtype, tuple(array.shape))
                chunks = _memory_chunks(array) if isinstance(array, np.ndarray) else array.chunks()
                for chunk in chunks:
                    entry.write(chunk)


def _write_header(entry: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": shape,
    }
    try:
        np.lib.format.write_array_header_1_0(entry, header)
    except ValueError:
        # Only a header longer than 65535 bytes needs format 2.0.
        np.lib.format.write_array_header_2_0(entry, header)


def _memory_chunks(array: np.ndarray) -> Iterator[memoryview]:
    raw = memoryview(array.reshape(-1).view(np.uint8))
    for start in range(0, raw.nbytes, _WRITE_CHUNK_BYTES):
        yield raw[start : start + _WRITE_CHUNK_BYTES]


def read_index(stream: Any, *, path: Path) -> dict[str, StoredArray]:
    """Return the location of each array of the archive in `stream`, by name.

    `stream` is a seekable binary file object over the archive alone. Raises
    CorruptFileError naming `path` for anything that is not an uncompressed
    archive of plain `.npy` entries.
    """
    try:
        with zipfile.ZipFile(stream, "r") as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise CorruptFileError(f"corrupt store file {path}: unreadable .npz ({error})") from error

    index: dict[str, StoredArray] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise CorruptFileError(f"corrupt store file {path}: unexpected entry {info.filename!r}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CorruptFileError(
                f"corrupt store file {path}: entry {info.filename!r} is compressed; the store "
                "writes only uncompressed entries"
            )
        name = info.filename[: -len(".npy")]
        index[name] = _locate_array(stream, info, name, path)
    return index


def _locate_array(stream: Any, info: zipfile.ZipInfo, name: str, path: Path) -> StoredArray:
    stream.seek(info.header_offset)
    local = stream.read(_LOCAL_HEADER.size)
    if len(local) != _LOCAL_HEADER.size or local[:4] != _LOCAL_SIGNATURE:
        raise CorruptFileError(f"corrupt store file {path}: bad ZIP header of entry {name!r}")
    name_length, extra_length = _LOCAL_HEADER.unpack(local)[-2:]
    data_start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    stream.seek(data_start)
    try:
        with _NPY_HEADER_LOCK:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f".npy format version {version} is not one the store writes")
    except ValueError as error:
        raise CorruptFileError(f"corrupt store file {path}: array {name!r}: {error}") from error
    if dtype.hasobject:
        raise CorruptFileError(
            f"corrupt store file {path}: array {name!r} has dtype {dtype}, which contains Python "
            "objects; the store never unpickles"
        )
    stored = StoredArray(
        name=name, dtype=dtype, shape=tuple(shape), fortran_order=fortran_order, offset=stream.tell()
    )
    if stored.offset + stored.nbytes != data_start + info.file_size:
        raise CorruptFileError(
            f"corrupt store file {path}: array {name!r} of shape {stored.shape} and dtype "
            f"{dtype} does not fill its {info.file_size}-byte entry"
        )
    return stored
