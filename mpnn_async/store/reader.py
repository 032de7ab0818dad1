"""One committed version opened for reading, with its arrays read one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mpnn_async.errors import CorruptFileError
from mpnn_async.store.archive import StoredArray, read_index
from mpnn_async.store.files import FrameFile
from mpnn_async.store.names import Key
from mpnn_async.store.payloads import HEADER_ENTRY, decode_version_header

__all__ = ["VersionReader"]

# Bytes of one chunk yielded by VersionReader.chunks unless the caller gives another size.
DEFAULT_CHUNK_BYTES = 1 << 20


class VersionReader:
    """A version file whose digest and header were checked, kept open to read its arrays.

    Every array read goes straight from the file into the array that is
    returned, so reading all arrays needs their size in memory and no more.
    Use it as a context manager, or call `close`.
    """

    def __init__(self, frame_file: FrameFile, *, key: Key, number: int) -> None:
        """Index the archive in `frame_file` and check its header names `key` version `number`.

        Takes ownership of `frame_file`: it is closed here on error, else by `close`.
        """
        self._file = frame_file
        try:
            self._index = read_index(frame_file.stream(), path=frame_file.path)
            header = self._index.pop(HEADER_ENTRY, None)
            if header is None or header.dtype != np.uint8 or len(header.shape) != 1:
                raise CorruptFileError(
                    f"corrupt store file {frame_file.path}: no uint8 {HEADER_ENTRY} entry"
                )
            self.meta = decode_version_header(
                self._read(header).tobytes(), path=frame_file.path, key=key, number=number
            )
        except BaseException:
            frame_file.close()
            raise
        self.number = number

    def __repr__(self) -> str:
        return f"<VersionReader {str(self._file.path)!r} number={self.number} arrays={self.names}>"

    def __enter__(self) -> VersionReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def names(self) -> list[str]:
        """Names of the version's arrays, in the order they were written."""
        return list(self._index)

    def stored(self, name: str) -> StoredArray:
        """Return the dtype, shape and position of array `name`; raise KeyError if there is none."""
        return self._index[name]

    def read(self, name: str) -> np.ndarray:
        """Return array `name` as a new, writable array."""
        return self._read(self._index[name])

    def read_all(self) -> dict[str, np.ndarray]:
        return {name: self._read(stored) for name, stored in self._index.items()}

    def chunks(self, name: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[memoryview]:
        """Yield the bytes of array `name` in C order, `chunk_bytes` at a time, from one buffer.

        Each chunk is overwritten by the next one. Raises ValueError for an array
        stored in Fortran order, which this store writes only for arrays given
        to it in that order.
        """
        stored = self._index[name]
        if stored.fortran_order and len(stored.shape) > 1:
            raise ValueError(f"array {name!r} is stored in Fortran order; read it with read()")
        buffer = memoryview(bytearray(max(1, min(chunk_bytes, stored.nbytes))))
        for start in range(0, stored.nbytes, buffer.nbytes):
            view = buffer[: min(buffer.nbytes, stored.nbytes - start)]
            self._file.read_into(view, stored.offset + start)
            yield view

    def _read(self, stored: StoredArray) -> np.ndarray:
        array: np.ndarray[Any, Any] = np.empty(
            stored.shape, dtype=stored.dtype, order="F" if stored.fortran_order else "C"
        )
        raw = array.T if stored.fortran_order else array
        self._file.read_into(memoryview(raw.reshape(-1).view(np.uint8)), stored.offset)
        return array
