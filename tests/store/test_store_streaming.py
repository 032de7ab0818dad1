"""Version files streamed to and from disk: same bytes, bounded memory, partial reads, failures."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mpnn_async.store import ArraySource, CorruptFileError, Store, StoreError
from mpnn_async.store.files import FileKind, frame, write_atomic
from mpnn_async.store.payloads import encode_version, encode_version_header

KEY = ("models", "m", "partitions", "p0")
MIB = 1 << 20


class ChunkedArray:
    """An ArraySource over an in-memory array, yielding `chunk_bytes` at a time."""

    def __init__(self, array: np.ndarray, chunk_bytes: int, *, fail_after: int | None = None) -> None:
        self._array = np.ascontiguousarray(array)
        self._chunk_bytes = chunk_bytes
        self._fail_after = fail_after

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._array.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    def chunks(self) -> Iterator[memoryview]:
        raw = memoryview(self._array.reshape(-1).view(np.uint8))
        for index, start in enumerate(range(0, raw.nbytes, self._chunk_bytes)):
            if self._fail_after is not None and index >= self._fail_after:
                raise OSError("source device failed")
            yield raw[start : start + self._chunk_bytes]


def _version_path(store: Store, number: int) -> Path:
    return store.root.joinpath(*KEY) / f"_v{number:012d}"


def test_streamed_file_equals_framed_payload(store: Store) -> None:
    arrays = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "strided": np.arange(20.0).reshape(4, 5)[:, ::2],
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "scalar": np.array(7, dtype=np.int64),
    }

    store.commit(KEY, arrays, {"step": 2}, expected_version=None)

    expected = frame(FileKind.VERSION, encode_version(KEY, 1, arrays, {"step": 2}))
    assert _version_path(store, 1).read_bytes() == expected


def test_array_source_round_trip(store: Store) -> None:
    values = np.random.default_rng(0).standard_normal((33, 7))
    source = ChunkedArray(values, chunk_bytes=100)
    assert isinstance(source, ArraySource)

    store.commit(KEY, {"m": source, "w": np.ones(3)}, {"step": 1}, expected_version=None)
    version = store.read(KEY)

    np.testing.assert_array_equal(version.arrays["m"], values)
    np.testing.assert_array_equal(version.arrays["w"], np.ones(3))
    assert version.meta == {"step": 1}


def test_failed_source_leaves_previous_version(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(4)}, expected_version=None)
    broken = ChunkedArray(np.ones(1000), chunk_bytes=800, fail_after=3)

    with pytest.raises(StoreError, match="failed to write store file .*_v000000000002: source device failed"):
        store.commit(KEY, {"w": broken}, expected_version=1)

    directory = store.root.joinpath(*KEY)
    assert sorted(path.name for path in directory.iterdir()) == ["_LATEST", "_LOCK", "_v000000000001"]
    assert store.latest_version(KEY) == 1
    np.testing.assert_array_equal(store.read(KEY).arrays["w"], np.zeros(4))


def test_commit_builds_no_copy_of_payload(store: Store) -> None:
    arrays = {name: np.full((1024, 1024), 1.5) for name in ("w", "m", "v")}  # 24 MiB

    tracemalloc.start()
    try:
        store.commit(KEY, arrays, {"step": 1}, expected_version=None)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak_bytes < 4 * MIB, f"commit peaked at {peak_bytes} bytes"


def test_read_allocates_only_the_arrays(store: Store) -> None:
    arrays = {name: np.full((1024, 1024), 2.5) for name in ("w", "m", "v")}  # 24 MiB
    store.commit(KEY, arrays, {"step": 1}, expected_version=None)

    tracemalloc.start()
    try:
        version = store.read(KEY)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak_bytes < 24 * MIB + 2 * MIB, f"read peaked at {peak_bytes} bytes"
    for name in arrays:
        np.testing.assert_array_equal(version.arrays[name], arrays[name])
        assert version.arrays[name].flags.writeable


def test_open_version_reads_one_array_and_chunks(store: Store) -> None:
    weights = np.arange(50.0).reshape(10, 5)
    store.commit(KEY, {"w": weights, "b": np.ones(10, dtype=np.float32)}, {"step": 4}, expected_version=None)

    with store.open_version(KEY) as reader:
        assert reader.number == 1
        assert reader.meta == {"step": 4}
        assert reader.names == ["w", "b"]
        assert reader.stored("b").dtype == np.float32
        assert reader.stored("w").shape == (10, 5)
        np.testing.assert_array_equal(reader.read("b"), np.ones(10, dtype=np.float32))
        chunks = [bytes(chunk) for chunk in reader.chunks("w", chunk_bytes=120)]

    assert [len(chunk) for chunk in chunks] == [120, 120, 120, 40]
    assert b"".join(chunks) == weights.tobytes()


def test_open_version_of_missing_version(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=None)

    with pytest.raises(LookupError, match="no committed version 2"):
        store.open_version(KEY, version=2)


def _write_raw_version(store: Store, payload: bytes) -> Path:
    directory = store.root.joinpath(*KEY)
    directory.mkdir(parents=True)
    write_atomic(directory / "_v000000000001", frame(FileKind.VERSION, payload))
    pointer = b'{"key":["models","m","partitions","p0"],"version":1}'
    write_atomic(directory / "_LATEST", frame(FileKind.POINTER, pointer))
    return directory / "_v000000000001"


def _header_entry() -> np.ndarray:
    return np.frombuffer(encode_version_header(KEY, 1, {}), dtype=np.uint8)


def test_compressed_entry_is_rejected(store: Store) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in (("_header", _header_entry()), ("w", np.zeros(100))):
            with archive.open(f"{name}.npy", "w") as entry:
                np.lib.format.write_array(entry, array)
    path = _write_raw_version(store, buffer.getvalue())

    with pytest.raises(CorruptFileError, match="compressed") as info:
        store.read(KEY)
    assert str(path) in str(info.value)


def test_object_array_is_rejected_unread(store: Store) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in (("_header", _header_entry()), ("w", np.array([{"a": 1}], dtype=object))):
            with archive.open(f"{name}.npy", "w") as entry:
                np.lib.format.write_array(entry, array, allow_pickle=True)
    _write_raw_version(store, buffer.getvalue())

    with pytest.raises(CorruptFileError, match="never unpickles"):
        store.read(KEY)


def test_entry_size_must_match_its_array(store: Store) -> None:
    # A .npy header that announces more elements than its entry holds.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open("_header.npy", "w") as entry:
            np.lib.format.write_array(entry, _header_entry())
        with archive.open("w.npy", "w") as entry:
            np.lib.format.write_array_header_1_0(
                entry, {"descr": "<f8", "fortran_order": False, "shape": (1000,)}
            )
            entry.write(np.zeros(10).tobytes())
    _write_raw_version(store, buffer.getvalue())

    with pytest.raises(CorruptFileError, match="does not fill its"):
        store.read(KEY)
