"""Every store file is checked on load; damage raises CorruptFileError naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mpnn_async.store import CorruptFileError, Store

KEY = ("models", "m", "partitions", "p0")

# Offsets into a file: the magic, the kind byte, the size field, the digest,
# the first payload byte, the middle and the last byte.
OFFSETS = [0, 8, 9, 20, 49, "middle", -1]


def _flip_byte(path: Path, offset: int | str) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset == "middle" else int(offset)
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def committed(store: Store) -> Path:
    store.commit(KEY, {"w": np.arange(1000.0)}, {"step": 1}, expected_version=None)
    return store.root.joinpath(*KEY)


@pytest.mark.parametrize("offset", OFFSETS)
def test_flipped_byte_in_version_file(store: Store, committed: Path, offset: int | str) -> None:
    path = committed / "_v000000000001"
    _flip_byte(path, offset)

    with pytest.raises(CorruptFileError) as info:
        store.read(KEY)
    assert str(path) in str(info.value)
    with pytest.raises(CorruptFileError):
        store.read(KEY, version=1)


@pytest.mark.parametrize("offset", OFFSETS)
def test_flipped_byte_in_pointer_file(store: Store, committed: Path, offset: int | str) -> None:
    path = committed / "_LATEST"
    _flip_byte(path, offset)

    with pytest.raises(CorruptFileError) as info:
        store.read(KEY)
    assert str(path) in str(info.value)
    with pytest.raises(CorruptFileError):
        store.latest_version(KEY)
    with pytest.raises(CorruptFileError):
        store.commit(KEY, {"w": np.zeros(1)}, expected_version=1)


@pytest.mark.parametrize("offset", OFFSETS)
def test_flipped_byte_in_document(store: Store, offset: int | str) -> None:
    store.put_document(("plans",), "p1", {"layers": [4, 3, 2], "name": "x" * 100})
    path = store.root / "plans" / "_doc.p1"
    _flip_byte(path, offset)

    with pytest.raises(CorruptFileError) as info:
        store.get_document(("plans",), "p1")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("size_bytes", [0, 10, 48, 49, 200])
def test_truncated_version_file(store: Store, committed: Path, size_bytes: int) -> None:
    path = committed / "_v000000000001"
    path.write_bytes(path.read_bytes()[:size_bytes])

    with pytest.raises(CorruptFileError, match="corrupt store file"):
        store.read(KEY)


def test_appended_byte_in_version_file(store: Store, committed: Path) -> None:
    path = committed / "_v000000000001"
    path.write_bytes(path.read_bytes() + b"\0")

    with pytest.raises(CorruptFileError, match="payload"):
        store.read(KEY)


def test_version_file_copied_over_another(store: Store, committed: Path) -> None:
    # A well-formed file in the wrong place: its header names version 1.
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=1)
    shutil.copyfile(committed / "_v000000000001", committed / "_v000000000002")

    with pytest.raises(CorruptFileError, match="expected .* version 2"):
        store.read(KEY)


def test_pointer_file_of_another_key(store: Store, committed: Path) -> None:
    other = ("models", "m", "partitions", "p1")
    store.commit(other, {"w": np.zeros(1)}, expected_version=None)
    shutil.copyfile(store.root.joinpath(*other) / "_LATEST", committed / "_LATEST")

    with pytest.raises(CorruptFileError, match="does not name a version"):
        store.read(KEY)


def test_pointer_file_swapped_with_document(store: Store, committed: Path) -> None:
    store.put_document(KEY, "doc", {"a": 1})
    shutil.copyfile(committed / "_doc.doc", committed / "_LATEST")

    with pytest.raises(CorruptFileError, match="kind"):
        store.read(KEY)
