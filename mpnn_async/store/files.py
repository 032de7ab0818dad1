"""Checksummed store files, written atomically.

Every file the store writes is a frame:

    offset  size  field
    0       8     magic b"MPNNSTR1" (the final digit is the frame format version)
    8       1     kind: b"V" version, b"P" pointer, b"D" document
    9       8     payload size in bytes, unsigned little-endian
    17      32    SHA-256 of kind + payload size field + payload
    49      n     payload

A flipped, missing or extra byte anywhere in the file makes `unframe` raise
CorruptFileError. `write_atomic` writes to a temporary file in the target's
directory, flushes it to disk, renames it over the target and flushes the
directory. A reader therefore sees the old file or the whole new one, and a
crash loses at most the write in progress.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import os
import secrets
import struct
from pathlib import Path

from mpnn_async.errors import CorruptFileError, StoreError

__all__ = [
    "TEMP_PREFIX",
    "FileKind",
    "frame",
    "fsync_directory",
    "make_directories",
    "read_bytes",
    "unframe",
    "write_atomic",
]

MAGIC = b"MPNNSTR1"
_HEADER = struct.Struct("<8s1sQ32s")
_SIZE_FIELD = struct.Struct("<Q")

# Temporary files start with "." so that no valid store name can collide with one.
TEMP_PREFIX = ".tmp."


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
    if magic != MAGIC:
        raise CorruptFileError(
            f"corrupt store file {path}: bad magic {magic!r}, expected {MAGIC!r}"
        )
    if kind_byte != kind.value:
        raise CorruptFileError(
            f"corrupt store file {path}: kind {kind_byte!r}, expected {kind.value!r} ({kind.name})"
        )
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
    temp_path = directory / f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
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
