"""Checksummed store files, written atomically.

Every file the store writes is a frame:

    offset  size  field
    0       8     magic b"MPNNSTR1" (the final digit is the frame format version)
    8       1     kind: b"V" version, b"P" pointer, b"D" document
    9       8     payload size in bytes, unsigned little-endian
    17      32    SHA-256 of kind + payload size field + payload
    49      n     payload

A flipped, missing or extra byte anywhere in the file makes `unframe` and
`open_frame` raise CorruptFileError. `write_atomic` and `write_atomic_frame`
write to a temporary file in the target's directory, flush it to disk, rename
it over the target and flush the directory. A reader therefore sees the old
file or the whole new one, and a crash loses at most the write in progress.

Small files (pointers, documents) go through memory with `frame` and
`unframe`. Version files can be larger than a worker's memory allows twice,
so `write_atomic_frame` lets its caller stream the payload into the file and
`open_frame` checks a file's digest by streaming it; neither holds a copy of
the payload.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from mpnn_async.errors import CorruptFileError, StoreError

__all__ = [
    "TEMP_PREFIX",
    "FileKind",
    "FrameFile",
    "frame",
    "fsync_directory",
    "make_directories",
    "open_frame",
    "read_bytes",
    "unframe",
    "write_atomic",
    "write_atomic_frame",
]

MAGIC = b"MPNNSTR1"
_HEADER = struct.Struct("<8s1sQ32s")
_SIZE_FIELD = struct.Struct("<Q")

# Temporary files start with "." so that no valid store name can collide with one.
TEMP_PREFIX = ".tmp."
_T = TypeVar("_T")

# Bytes read at a time when a payload is hashed or copied from a file.
_IO_CHUNK_BYTES = 1 << 20


class FileKind(enum.Enum):
    VERSION = b"V"  # one immutable version of an object: arrays and metadata
    POINTER = b"P"  # the number of an object's latest version
    DOCUMENT = b"D"  # one immutable JSON document


def frame(kind: FileKind, payload: bytes) -> bytes:
    """Return `payload` behind a header carrying its kind, size and SHA-256."""
    digest = _digest(kind, payload)
    return _HEADER.pack(MAGIC, kind.value, len(payload), digest) + payload


def unframe(data: bytes, *, kind: FileKind, path: Path) -> bytes:
    """Return the payload of a frame after checking it, else raise CorruptFileError naming `path`."""
    if len(data) < _HEADER.size:
        raise CorruptFileError(
            f"corrupt store file {path}: {len(data)} bytes is shorter than the "
            f"{_HEADER.size}-byte header"
        )
    magic, kind_byte, size_bytes, digest = _HEADER.unpack_from(data)
    _check_header_fields(path, kind, magic, kind_byte)
    payload = data[_HEADER.size :]
    if len(payload) != size_bytes:
        raise CorruptFileError(
            f"corrupt store file {path}: header gives a {size_bytes}-byte payload, "
            f"file holds {len(payload)} bytes"
        )
    if _digest(kind, payload) != digest:
        raise CorruptFileError(f"corrupt store file {path}: SHA-256 checksum mismatch")
    return payload


def _digest(kind: FileKind, payload: bytes) -> bytes:
    hasher = hashlib.sha256(kind.value)
    hasher.update(_SIZE_FIELD.pack(len(payload)))
    hasher.update(payload)
    return hasher.digest()


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers and crashes see the old or the whole new file.

    The steps: create a unique temporary file in the same directory (a rename
    is atomic only within one file system), write, fsync, rename over `path`,
    fsync the directory so the rename itself is durable. On failure the
    temporary file is removed; after a crash it is left behind, and
    `Store.prune` removes it.
    """
    directory = path.parent
    temp_path = _temp_path(path)
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_path, path)
        fsync_directory(directory)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise StoreError(f"failed to write store file {path}: {error}") from error


def _temp_path(path: Path) -> Path:
    return path.parent / f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}"


def write_atomic_frame(
    path: Path, kind: FileKind, write_payload: Callable[[BinaryIO], None]
) -> int:
    """Write a frame whose payload `write_payload` writes to a file object; return the file size.

    The guarantees are those of `write_atomic`. The payload goes straight to
    the temporary file behind a blank header. The digest covers the payload
    size, which is known only at the end, so the payload is then read back
    from the file (from the page cache, in 1 MiB chunks) to hash it. The
    header is written last, before the fsync. The file object that
    `write_payload` receives counts positions from the payload's first byte
    and can seek, as zipfile needs.
    """
    temp_path = _temp_path(path)
    try:
        fd = os.open(temp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "w+b", closefd=False) as file:
                file.write(bytes(_HEADER.size))
                write_payload(_PayloadWriter(file))
            size_bytes = os.fstat(fd).st_size - _HEADER.size
            digest = _digest_range(fd, kind, _HEADER.size, size_bytes)
            os.pwrite(fd, _HEADER.pack(MAGIC, kind.value, size_bytes, digest), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_path, path)
        fsync_directory(path.parent)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        if isinstance(error, OSError):
            raise StoreError(f"failed to write store file {path}: {error}") from error
        raise
    return _HEADER.size + size_bytes


class _PayloadWriter:
    """A writable, seekable view of a file whose position 0 is the payload's first byte.

    Only the methods zipfile calls are provided.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell() - _HEADER.size

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            offset += _HEADER.size
        return self._file.seek(offset, whence) - _HEADER.size

    def flush(self) -> None:
        self._file.flush()


def _digest_range(fd: int, kind: FileKind, start: int, size_bytes: int) -> bytes:
    """Return the frame digest of the `size_bytes` payload bytes at offset `start` of `fd`."""
    hasher = hashlib.sha256(kind.value)
    hasher.update(_SIZE_FIELD.pack(size_bytes))
    buffer = memoryview(bytearray(min(_IO_CHUNK_BYTES, max(size_bytes, 1))))
    offset, end = start, start + size_bytes
    while offset < end:
        count = os.preadv(fd, [buffer[: min(len(buffer), end - offset)]], offset)
        if count == 0:
            raise OSError(errno.EIO, f"file ended {end - offset} bytes before the payload's end")
        hasher.update(buffer[:count])
        offset += count
    return hasher.digest()


class FrameFile:
    """An open store file whose frame and digest were checked; reads go to the payload.

    Returned by `open_frame`; close it, or use it as a context manager. The
    file stays open, so its content cannot be swapped after the check: the
    store replaces files only by renaming new ones over them.
    """

    def __init__(self, fd: int, path: Path, payload_size: int) -> None:
        self._fd = fd
        self.path = path
        self.payload_size = payload_size

    def __repr__(self) -> str:
        return f"<FrameFile {str(self.path)!r} payload_size={self.payload_size}>"

    def __enter__(self) -> FrameFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read_into(self, buffer: memoryview, offset: int) -> None:
        """Fill `buffer` (bytes) from payload offset `offset`; raise CorruptFileError past the end."""
        if offset < 0 or offset + buffer.nbytes > self.payload_size:
            raise CorruptFileError(
                f"corrupt store file {self.path}: bytes {offset}..{offset + buffer.nbytes} "
                f"are outside the {self.payload_size}-byte payload"
            )
        done = 0
        while done < buffer.nbytes:
            count = _map_read_error(
                self.path, os.preadv, self._fd, [buffer[done:]], _HEADER.size + offset + done
            )
            if count == 0:
                raise CorruptFileError(f"corrupt store file {self.path}: ended while being read")
            done += count

    def stream(self) -> _PayloadReader:
        """Return a read-only, seekable file object over the payload, for zipfile."""
        return _PayloadReader(self)


class _PayloadReader:
    """Reads a FrameFile's payload from a position; only the methods zipfile calls are provided."""

    def __init__(self, frame_file: FrameFile) -> None:
        self._frame_file = frame_file
        self._position = 0

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence == os.SEEK_END:
            offset += self._frame_file.payload_size
        if offset < 0:
            raise OSError(errno.EINVAL, f"negative seek position {offset}")
        self._position = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        available = max(0, self._frame_file.payload_size - self._position)
        count = available if size is None or size < 0 else min(size, available)
        buffer = bytearray(count)
        self._frame_file.read_into(memoryview(buffer), self._position)
        self._position += count
        return bytes(buffer)


def open_frame(path: Path, *, kind: FileKind) -> FrameFile:
    """Open a store file, check its frame and digest without loading it whole, return it open.

    Raises FileNotFoundError when the file is gone (ESTALE included, as in
    `read_bytes`), CorruptFileError naming `path` for any damage, and
    StoreError for other I/O errors.
    """
    fd = _map_read_error(path, os.open, path, os.O_RDONLY)
    try:
        header = _map_read_error(path, os.pread, fd, _HEADER.size, 0)
        if len(header) < _HEADER.size:
            raise CorruptFileError(
                f"corrupt store file {path}: {len(header)} bytes is shorter than the "
                f"{_HEADER.size}-byte header"
            )
        magic, kind_byte, size_bytes, digest = _HEADER.unpack(header)
        _check_header_fields(path, kind, magic, kind_byte)
        payload_bytes = os.fstat(fd).st_size - _HEADER.size
        if payload_bytes != size_bytes:
            raise CorruptFileError(
                f"corrupt store file {path}: header gives a {size_bytes}-byte payload, "
                f"file holds {payload_bytes} bytes"
            )
        if _map_read_error(path, _digest_range, fd, kind, _HEADER.size, size_bytes) != digest:
            raise CorruptFileError(f"corrupt store file {path}: SHA-256 checksum mismatch")
    except BaseException:
        os.close(fd)
        raise
    return FrameFile(fd, path, size_bytes)


def _check_header_fields(path: Path, kind: FileKind, magic: bytes, kind_byte: bytes) -> None:
    if magic != MAGIC:
        raise CorruptFileError(
            f"corrupt store file {path}: bad magic {magic!r}, expected {MAGIC!r}"
        )
    if kind_byte != kind.value:
        raise CorruptFileError(
            f"corrupt store file {path}: kind {kind_byte!r}, expected {kind.value!r} ({kind.name})"
        )


def _map_read_error(path: Path, function: Callable[..., _T], *args: object) -> _T:
    """Call `function` and map its OSError as `read_bytes` does."""
    try:
        return function(*args)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno == errno.ESTALE:
            raise FileNotFoundError(errno.ENOENT, "stale NFS file handle", str(path)) from error
        raise StoreError(f"failed to read store file {path}: {error}") from error


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (creations, renames, removals) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes(path: Path) -> bytes:
    """Return the whole content of `path`.

    Raises FileNotFoundError when the file is gone, including ESTALE: an NFS
    client returns that when another host removed a file this host had looked
    up. Any other OSError becomes StoreError.
    """
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno == errno.ESTALE:
            raise FileNotFoundError(errno.ENOENT, "stale NFS file handle", str(path)) from error
        raise StoreError(f"failed to read store file {path}: {error}") from error


def make_directories(root: Path, components: tuple[str, ...]) -> Path:
    """Create `root/components...` one level at a time and return it.

    Each directory created is made durable by flushing its parent, so a
    committed file is never lost with the directory entry that leads to it.
    """
    path = root
    for component in components:
        parent, path = path, path / component
        try:
            os.mkdir(path)
        except FileExistsError:
            if not path.is_dir():
                raise StoreError(
                    f"store path {path} exists but is not a directory; move that file away"
                ) from None
            continue
        except OSError as error:
            raise StoreError(f"failed to create store directory {path}: {error}") from error
        fsync_directory(parent)
    return path
