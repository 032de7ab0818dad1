"""The shared store: versioned arrays and immutable JSON documents in one directory tree.

In production the root is a directory on an NFS (v4) mount shared by every
host, and in tests it is a temporary directory. A key such as
("models", "mnist", "partitions", "p0") names the directory
`<root>/models/mnist/partitions/p0`; `layout` lists the files in it.

Writers (`commit`, `update`, `prune`, `put_document`) hold the key's lock,
write each file atomically (see `files.write_atomic_frame`), and write a version
file before the pointer that names it, so the pointer only ever names a
complete version. Readers take no lock: they read the pointer, then the
version file it names, and retry when a concurrent prune removed that file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mpnn_async.errors import (
    ConflictError,
    CorruptFileError,
    InvalidInputError,
    RetryableError,
    StoreError,
)
from mpnn_async.store.files import (
    TEMP_PREFIX,
    FileKind,
    frame,
    fsync_directory,
    make_directories,
    open_frame,
    read_bytes,
    unframe,
    write_atomic,
    write_atomic_frame,
)
from mpnn_async.store.layout import (
    DOCUMENT_PREFIX,
    LOCK_FILE,
    POINTER_FILE,
    list_directory,
    unlink,
    version_file_name,
    version_numbers,
)
from mpnn_async.store.locking import hold_lock
from mpnn_async.store.names import NAME_PATTERN, Key, validate_key, validate_name
from mpnn_async.store.payloads import (
    check_arrays,
    decode_json,
    encode_json,
    encode_version_header,
    write_version,
)
from mpnn_async.store.reader import VersionReader

__all__ = ["NotFoundError", "StaleReadError", "Store", "UpdateFunction", "Version", "VersionReader"]

logger = logging.getLogger(__name__)

# A reader gives up after this many attempts, sleeping between them from
# 1 ms doubling to 50 ms (about 0.8 s in total).
_READ_ATTEMPTS = 20
_READ_FIRST_BACKOFF_S = 0.001
_READ_MAX_BACKOFF_S = 0.05


class NotFoundError(StoreError, LookupError):
    """The object, version or document does not exist in the store."""


class StaleReadError(RetryableError):
    """A reader found the latest version pruned on every attempt; a later read may succeed."""


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class Version:
    """One committed version of an object: its number, arrays and JSON metadata."""

    number: int
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    def __repr__(self) -> str:
        arrays = ", ".join(
            f"{name}{tuple(array.shape)} {array.dtype}" for name, array in self.arrays.items()
        )
        return f"<Version {self.number} arrays=[{arrays}] meta_keys={sorted(self.meta)}>"


# Receives the latest version (None for a new object) and returns the arrays
# and meta of the next one.
UpdateFunction = Callable[[Version | None], tuple[Mapping[str, Any], Mapping[str, Any]]]


class Store:
    """A store rooted at an existing, writable directory.

    `lock_timeout_s` bounds how long a writer waits for a key's lock before
    raising LockTimeoutError.

    NOTE: an NFS share that failed to mount leaves an empty local directory
    at the mount point, which passes the root checks, so check the mount
    before starting workers.
    """

    def __init__(self, root: str | os.PathLike[str], *, lock_timeout_s: float = 30.0) -> None:
        if isinstance(lock_timeout_s, bool) or not isinstance(lock_timeout_s, (int, float)):
            raise InvalidInputError(f"invalid lock_timeout_s {lock_timeout_s!r}: must be a number")
        if not (math.isfinite(lock_timeout_s) and lock_timeout_s > 0):
            raise InvalidInputError(
                f"invalid lock_timeout_s {lock_timeout_s!r}: must be a finite number of seconds > 0"
            )
        path = Path(root)
        _check_root(path)
        self._root = path.resolve()
        self._lock_timeout_s = float(lock_timeout_s)

    @classmethod
    def open(
        cls, root: str | os.PathLike[str], *, create: bool = False, lock_timeout_s: float = 30.0
    ) -> Store:
        """Return the store at `root`, first creating the directory and its parents if `create`."""
        if create:
            try:
                Path(root).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(
                    f"failed to create store root {root}: {error}; create it by hand or "
                    "choose a writable path"
                ) from error
        return cls(root, lock_timeout_s=lock_timeout_s)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def lock_timeout_s(self) -> float:
        return self._lock_timeout_s

    def __repr__(self) -> str:
        return f"<Store root={str(self._root)!r} lock_timeout_s={self._lock_timeout_s:g}>"

    # Versioned objects: reading.

    def latest_version(self, key: Iterable[str]) -> int | None:
        """Return the number of the latest committed version of `key`, or None if there is none."""
        key = validate_key(key)
        return self._read_pointer(self._directory(key), key)

    def list_versions(self, key: Iterable[str]) -> list[int]:
        """Return the committed version numbers of `key` still on disk, oldest first."""
        key = validate_key(key)
        directory = self._directory(key)
        latest = self._read_pointer(directory, key)
        if latest is None:
            return []
        return [number for number in version_numbers(directory) if number <= latest]

    def read(self, key: Iterable[str], *, version: int | None = None) -> Version:
        """Return version `version` of `key`, or its latest version when `version` is None.

        Raises NotFoundError if the object or version does not exist (an old
        version may have been pruned), CorruptFileError if a file fails its
        checksum, and StaleReadError if the latest version was pruned under
        the reader on every attempt.
        """
        with self.open_version(key, version=version) as reader:
            return Version(number=reader.number, arrays=reader.read_all(), meta=reader.meta)

    def open_version(self, key: Iterable[str], *, version: int | None = None) -> VersionReader:
        """Open version `version` of `key` (the latest when None) to read its arrays one by one.

        The file's digest and header are checked before this returns; the
        errors are those of `read`. Close the reader (or use it in a `with`
        block): while it is open, its file stays readable even if a prune
        removes it (on NFS, only while this host has it open).
        """
        key = validate_key(key)
        directory = self._directory(key)
        if version is None:
            return self._open_latest(directory, key)

        number = _check_version_number(version, field="version")
        latest = self._read_pointer(directory, key)
        if latest is None or number > latest:
            raise NotFoundError(
                f"store object {_label(key)} has no committed version {number} "
                f"(latest: {latest}); read the latest version instead"
            )
        try:
            return self._open_version_file(directory, key, number)
        except FileNotFoundError:
            raise NotFoundError(
                f"version {number} of store object {_label(key)} was pruned (latest: {latest})"
            ) from None

    def _open_latest(self, directory: Path, key: Key) -> VersionReader:
        backoff_s = _READ_FIRST_BACKOFF_S
        number: int | None = None
        for attempt in range(1, _READ_ATTEMPTS + 1):
            number = self._read_pointer(directory, key)
            if number is None:
                raise NotFoundError(
                    f"store object {_label(key)} not found: it has no committed version"
                )
            try:
                return self._open_version_file(directory, key, number)
            except FileNotFoundError:
                # A writer committed a newer version and pruned this one after
                # the pointer was read; the pointer now names a newer file.
                logger.debug(
                    "store.read.retry key=%s version=%d attempt=%d", _label(key), number, attempt
                )
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _READ_MAX_BACKOFF_S)

        if number is not None and self._read_pointer(directory, key) == number:
            raise StoreError(
                f"store object {_label(key)}: the pointer {directory / POINTER_FILE} names "
                f"version {number}, but {directory / version_file_name(number)} is missing; "
                "it was removed outside the store API, so restore it from a backup"
            )
        raise StaleReadError(
            f"gave up reading store object {_label(key)} after {_READ_ATTEMPTS} attempts: each "
            "version read was pruned before it could be opened; retry, or prune with a larger keep"
        )

    def _read_pointer(self, directory: Path, key: Key) -> int | None:
        path = directory / POINTER_FILE
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            return None
        pointer = decode_json(unframe(data, kind=FileKind.POINTER, path=path), path=path)
        number = pointer.get("version")
        if pointer.get("key") != list(key) or not _is_version_number(number):
            raise CorruptFileError(
                f"corrupt store file {path}: pointer {pointer!r} does not name a version "
                f"of {list(key)!r}"
            )
        return number

    def _open_version_file(self, directory: Path, key: Key, number: int) -> VersionReader:
        path = directory / version_file_name(number)
        return VersionReader(open_frame(path, kind=FileKind.VERSION), key=key, number=number)

    # Versioned objects: writing.

    def commit(
        self,
        key: Iterable[str],
        arrays: Mapping[str, Any],
        meta: Mapping[str, Any] | None = None,
        *,
        expected_version: int | None,
    ) -> int:
        """Commit a new version of `key` and return its number.

        `expected_version` is the latest version the caller read, or None for
        a new object. The commit raises ConflictError if another writer has
        committed since (fencing), and otherwise writes version
        `expected_version + 1` (1 for a new object). Values of `arrays` are
        numpy arrays or `archive.ArraySource` objects. They are streamed into
        the version file while the lock is held, so no copy of the payload is
        built in memory. The lock is held as long as the file takes to write.
        """
        key = validate_key(key)
        if expected_version is not None:
            expected_version = _check_version_number(expected_version, field="expected_version")
        number = (expected_version or 0) + 1
        checked = check_arrays(arrays)
        header = encode_version_header(key, number, _check_meta(meta))

        def write_payload(stream: BinaryIO) -> None:
            write_version(stream, checked, header)

        directory = make_directories(self._root, key)
        with hold_lock(directory / LOCK_FILE, timeout_s=self._lock_timeout_s):
            self._write_version(directory, key, write_payload, number=number, expected=expected_version)
        return number

    def update(self, key: Iterable[str], fn: UpdateFunction) -> Version:
        """Apply `fn` to the latest version of `key` under its lock and commit the result.

        `fn` receives the latest Version (None for a new object) and returns
        `(arrays, meta)` for the next one. It runs while the lock is held, so
        it should be quick, and it must not write to the same key.
        """
        key = validate_key(key)
        directory = make_directories(self._root, key)
        with hold_lock(directory / LOCK_FILE, timeout_s=self._lock_timeout_s):
            current = self._read_pointer(directory, key)
            previous = None if current is None else self._load_locked(directory, key, current)
            arrays, meta = _check_update_result(fn(previous), key)
            number = (current or 0) + 1
            meta = _check_meta(meta)
            checked = check_arrays(arrays)
            header = encode_version_header(key, number, meta)

            def write_payload(stream: BinaryIO) -> None:
                write_version(stream, checked, header)

            self._write_version(directory, key, write_payload, number=number, expected=current)

        written = {name: np.asarray(value) for name, value in arrays.items()}
        return Version(
            number=number, arrays=written, meta=json.loads(encode_json(meta, field="meta"))
        )

    def _load_locked(self, directory: Path, key: Key, number: int) -> Version:
        # Under the lock no prune can run, so a missing latest file is damage.
        try:
            with self._open_version_file(directory, key, number) as reader:
                return Version(number=number, arrays=reader.read_all(), meta=reader.meta)
        except FileNotFoundError:
            raise StoreError(
                f"store object {_label(key)}: latest version file "
                f"{directory / version_file_name(number)} is missing; it was removed outside "
                "the store API, so restore it from a backup"
            ) from None

    def _write_version(
        self,
        directory: Path,
        key: Key,
        write_payload: Callable[[BinaryIO], None],
        *,
        number: int,
        expected: int | None,
    ) -> None:
        started = time.monotonic()
        current = self._read_pointer(directory, key)
        if current != expected:
            raise ConflictError(
                f"commit to store object {_label(key)} expected latest version {expected}, "
                f"but it is {current}; read the latest version and retry"
            )
        version_path = directory / version_file_name(number)
        if version_path.exists():
            # Left by a writer that crashed between its two renames; it was
            # never committed, since the pointer does not name it.
            logger.warning("store.commit.replace_uncommitted path=%s", version_path)
        size_bytes = write_atomic_frame(version_path, FileKind.VERSION, write_payload)
        pointer = encode_json({"key": list(key), "version": number}, field="pointer")
        write_atomic(directory / POINTER_FILE, frame(FileKind.POINTER, pointer))
        logger.debug(
            "store.commit key=%s version=%d size_bytes=%d ms=%.1f",
            _label(key),
            number,
            size_bytes,
            (time.monotonic() - started) * 1000,
        )

    def prune(self, key: Iterable[str], *, keep: int) -> list[int]:
        """Remove all but the `keep` newest committed versions of `key`; return the removed numbers.

        The latest version is never removed. The prune also removes version
        files above the latest and temporary files, which only a crashed
        writer leaves behind, since every writer holds the lock taken here.
        """
        key = validate_key(key)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidInputError(f"invalid keep {keep!r}: must be an int >= 1")
        directory = self._directory(key)
        if not directory.is_dir():
            return []

        with hold_lock(directory / LOCK_FILE, timeout_s=self._lock_timeout_s):
            latest = self._read_pointer(directory, key) or 0
            removed = [
                number
                for number in version_numbers(directory)
                if number <= latest - keep or number > latest
            ]
            for number in removed:
                unlink(directory / version_file_name(number))
            leftovers = [name for name in list_directory(directory) if name.startswith(TEMP_PREFIX)]
            for name in leftovers:
                logger.warning("store.prune.remove_temporary path=%s", directory / name)
                unlink(directory / name)
            if removed or leftovers:
                fsync_directory(directory)

        logger.debug("store.prune key=%s removed=%s", _label(key), removed)
        return removed

    # Immutable documents.

    def put_document(self, key: Iterable[str], name: str, data: Mapping[str, Any]) -> None:
        """Store the JSON object `data` as document `name` under `key`.

        Documents are immutable: storing the same content again does nothing,
        and storing different content under an existing name raises
        InvalidInputError.
        """
        key = validate_key(key)
        validate_name(name, field="document name")
        if not isinstance(data, Mapping):
            raise InvalidInputError(
                f"invalid document {name!r}: expected a JSON object (dict), got {type(data).__name__}"
            )
        content = encode_json(dict(data), field=f"document {name!r}")
        payload = encode_json(
            {"key": list(key), "name": name, "data": dict(data)}, field="document"
        )

        directory = make_directories(self._root, key)
        path = directory / f"{DOCUMENT_PREFIX}{name}"
        with hold_lock(directory / LOCK_FILE, timeout_s=self._lock_timeout_s):
            if path.exists():
                existing = self._load_document(path, key, name)
                if encode_json(existing, field="document") == content:
                    return
                raise InvalidInputError(
                    f"document {name!r} of store key {_label(key)} already exists with different "
                    "content; documents are immutable, so store the new content under a new name"
                )
            write_atomic(path, frame(FileKind.DOCUMENT, payload))
        logger.debug("store.put_document key=%s name=%s", _label(key), name)

    def get_document(self, key: Iterable[str], name: str) -> dict[str, Any]:
        """Return document `name` under `key`; raise NotFoundError if it does not exist."""
        key = validate_key(key)
        validate_name(name, field="document name")
        path = self._directory(key) / f"{DOCUMENT_PREFIX}{name}"
        try:
            return self._load_document(path, key, name)
        except FileNotFoundError:
            raise NotFoundError(
                f"document {name!r} of store key {_label(key)} not found ({path})"
            ) from None

    def _load_document(self, path: Path, key: Key, name: str) -> dict[str, Any]:
        document = decode_json(
            unframe(read_bytes(path), kind=FileKind.DOCUMENT, path=path), path=path
        )
        data = document.get("data")
        if document.get("key") != list(key) or document.get("name") != name:
            raise CorruptFileError(
                f"corrupt store file {path}: it contains document {document.get('name')!r} of "
                f"{document.get('key')!r}, expected {name!r} of {list(key)!r}"
            )
        if not isinstance(data, dict):
            raise CorruptFileError(f"corrupt store file {path}: document data is not an object")
        return data

    def list_documents(self, key: Iterable[str]) -> list[str]:
        """Return the names of the documents under `key`, sorted."""
        key = validate_key(key)
        names = [
            entry[len(DOCUMENT_PREFIX) :]
            for entry in list_directory(self._directory(key))
            if entry.startswith(DOCUMENT_PREFIX)
        ]
        return sorted(name for name in names if NAME_PATTERN.fullmatch(name))

    def list_children(self, key: Iterable[str] = ()) -> list[str]:
        """Return the names of the keys one level below `key` (the root for `()`), sorted."""
        directory = self._directory(validate_key(key, allow_empty=True))
        return sorted(
            name
            for name in list_directory(directory)
            if NAME_PATTERN.fullmatch(name) and (directory / name).is_dir()
        )

    def _directory(self, key: Key) -> Path:
        return self._root.joinpath(*key)


def _check_root(path: Path) -> None:
    try:
        is_directory = path.is_dir()
    except OSError as error:
        raise StoreError(
            f"store root {path} cannot be accessed ({error}); fix the permissions of it and "
            "its parent directories"
        ) from error
    if not path.exists():
        raise StoreError(
            f"store root {path} does not exist; mount the shared store there or create the "
            "directory, or point --store (MPNN_STORE) at an existing one"
        )
    if not is_directory:
        raise StoreError(f"store root {path} is not a directory; point the store at a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(
            f"store root {path} is not writable by user id {os.geteuid()}; fix its permissions "
            "or mount it read-write"
        )


def _check_version_number(value: object, *, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"invalid {field} {value!r}: must be an int >= 1")
    return value


def _is_version_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise InvalidInputError(f"invalid meta: expected a dict, got {type(meta).__name__}")
    return dict(meta)


def _check_update_result(result: object, key: Key) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Mapping)):
        raise InvalidInputError(
            f"update of store object {_label(key)}: the update function returned "
            f"{type(result).__name__}; it must return a tuple (arrays, meta)"
        )
    return result


def _label(key: Key) -> str:
    return "/".join(key)
