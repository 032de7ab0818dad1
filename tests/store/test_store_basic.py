"""Store behaviour within one process: round trips, fencing, pruning, documents, root checks."""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from mpnn_async.errors import ConflictError, InvalidInputError
from mpnn_async.store import NotFoundError, Store, StoreError, Version
from mpnn_async.store.files import FileKind, frame, write_atomic
from mpnn_async.store.payloads import encode_version

KEY = ("models", "m", "partitions", "p0")
HEADER_SIZE_BYTES = 49


def _object_dir(store: Store, key: tuple[str, ...] = KEY) -> Path:
    return store.root.joinpath(*key)


def test_commit_read_round_trip_keeps_dtypes(store: Store) -> None:
    arrays: dict[str, np.ndarray] = {
        "w32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "w64": np.linspace(-1, 1, 7),
        "steps": np.array(7, dtype=np.int64),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 5)),
        "strided": np.arange(20.0).reshape(4, 5)[:, ::2],
        "big_endian": np.arange(3, dtype=">f8"),
    }
    meta = {"step": 3, "nested": {"lr": 0.1, "names": ["a", "b"]}, "none": None}

    number = store.commit(KEY, arrays, meta, expected_version=None)
    version = store.read(KEY)

    assert number == 1
    assert version.number == 1
    assert version.meta == meta
    assert sorted(version.arrays) == sorted(arrays)
    for name, array in arrays.items():
        assert version.arrays[name].dtype == array.dtype, name
        assert version.arrays[name].shape == array.shape, name
        np.testing.assert_array_equal(version.arrays[name], array)


def test_version_file_payload_is_npz(store: Store) -> None:
    store.commit(KEY, {"w": np.eye(3)}, {"step": 1}, expected_version=None)

    data = (_object_dir(store) / "_v000000000001").read_bytes()
    with np.load(io.BytesIO(data[HEADER_SIZE_BYTES:]), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["_header", "w"]
        np.testing.assert_array_equal(archive["w"], np.eye(3))


def test_commit_leaves_only_store_files(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(3)}, expected_version=None)
    store.commit(KEY, {"w": np.ones(3)}, expected_version=1)

    names = sorted(os.listdir(_object_dir(store)))
    assert names == ["_LATEST", "_LOCK", "_v000000000001", "_v000000000002"]


def test_read_older_version_by_number(store: Store) -> None:
    for number in range(1, 4):
        store.commit(
            KEY, {"w": np.full(2, number)}, {"n": number}, expected_version=number - 1 or None
        )

    assert store.latest_version(KEY) == 3
    assert store.list_versions(KEY) == [1, 2, 3]
    assert store.read(KEY, version=2).meta == {"n": 2}
    np.testing.assert_array_equal(store.read(KEY, version=1).arrays["w"], [1, 1])


def test_read_missing_object_raises_not_found(store: Store) -> None:
    assert store.latest_version(KEY) is None
    assert store.list_versions(KEY) == []
    with pytest.raises(NotFoundError, match="no committed version"):
        store.read(KEY)


def test_read_uncommitted_version_raises_not_found(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=None)
    with pytest.raises(NotFoundError, match="no committed version 2"):
        store.read(KEY, version=2)


@pytest.mark.parametrize("version", [0, -1, True, 1.0, "1"])
def test_read_invalid_version_number(store: Store, version: object) -> None:
    with pytest.raises(InvalidInputError, match="invalid version"):
        store.read(KEY, version=version)  # type: ignore[arg-type]


def test_commit_stale_expected_version_conflicts(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=None)
    store.commit(KEY, {"w": np.ones(1)}, expected_version=1)

    with pytest.raises(ConflictError, match="expected latest version 1, but it is 2"):
        store.commit(KEY, {"w": np.full(1, 9)}, expected_version=1)
    with pytest.raises(ConflictError, match="expected latest version None, but it is 2"):
        store.commit(KEY, {"w": np.full(1, 9)}, expected_version=None)
    with pytest.raises(ConflictError, match="expected latest version 5, but it is 2"):
        store.commit(KEY, {"w": np.full(1, 9)}, expected_version=5)

    assert store.latest_version(KEY) == 2
    np.testing.assert_array_equal(store.read(KEY).arrays["w"], [1])
    assert store.list_versions(KEY) == [1, 2]


def test_two_writers_from_same_version_one_wins(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=None)
    first = store.read(KEY)
    second = store.read(KEY)

    store.commit(KEY, {"w": first.arrays["w"] + 1}, expected_version=first.number)
    with pytest.raises(ConflictError):
        store.commit(KEY, {"w": second.arrays["w"] + 1}, expected_version=second.number)

    np.testing.assert_array_equal(store.read(KEY).arrays["w"], [1])


def test_commit_rejects_object_arrays(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="Python objects"):
        store.commit(KEY, {"w": np.array([{"a": 1}], dtype=object)}, expected_version=None)
    assert store.latest_version(KEY) is None


@pytest.mark.parametrize(
    "meta", [{"x": float("nan")}, {"x": object()}, {"x": np.int64(1)}, {"x": b"bytes"}]
)
def test_commit_rejects_non_json_meta(store: Store, meta: dict) -> None:
    with pytest.raises(InvalidInputError, match="not JSON-serializable"):
        store.commit(KEY, {"w": np.zeros(1)}, meta, expected_version=None)


def test_commit_rejects_non_mapping_arrays(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="expected a mapping"):
        store.commit(KEY, [np.zeros(1)], expected_version=None)  # type: ignore[arg-type]


def test_update_creates_then_increments(store: Store) -> None:
    seen: list[Version | None] = []

    def increment(version: Version | None) -> tuple[dict, dict]:
        seen.append(version)
        count = 0 if version is None else int(version.arrays["count"])
        return {"count": np.array(count + 1)}, {"count": count + 1}

    first = store.update(KEY, increment)
    second = store.update(KEY, increment)

    assert seen[0] is None
    assert seen[1] is not None and seen[1].number == 1
    assert (first.number, second.number) == (1, 2)
    assert second.meta == {"count": 2}
    assert int(store.read(KEY).arrays["count"]) == 2


def test_update_function_error_commits_nothing(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=None)

    def fail(version: Version | None) -> tuple[dict, dict]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.update(KEY, fail)

    assert store.latest_version(KEY) == 1
    # The lock was released: a commit goes through at once.
    quick = Store(store.root, lock_timeout_s=0.2)
    assert quick.commit(KEY, {"w": np.ones(1)}, expected_version=1) == 2


def test_update_function_bad_result_rejected(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="must return a tuple"):
        store.update(KEY, lambda version: {"w": np.zeros(1)})  # type: ignore[arg-type,return-value]
    assert store.latest_version(KEY) is None


def test_nested_write_inside_update_rejected(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=None)

    def nested(version: Version | None) -> tuple[dict, dict]:
        store.commit(KEY, {"w": np.ones(1)}, expected_version=1)
        return {"w": np.ones(1)}, {}

    with pytest.raises(InvalidInputError, match="already holds the store lock"):
        store.update(KEY, nested)
    assert store.latest_version(KEY) == 1


def test_threads_updating_one_key_count_exactly(store: Store) -> None:
    store.commit(KEY, {"count": np.array(0)}, expected_version=None)
    updates_per_thread = 50

    def increment(version: Version | None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        assert version is not None
        return {"count": version.arrays["count"] + 1}, {}

    def work() -> None:
        for _ in range(updates_per_thread):
            store.update(KEY, increment)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert int(store.read(KEY).arrays["count"]) == 4 * updates_per_thread
    assert store.latest_version(KEY) == 1 + 4 * updates_per_thread


def test_prune_keeps_newest_versions(store: Store) -> None:
    for number in range(1, 6):
        store.commit(KEY, {"w": np.full(1, number)}, expected_version=number - 1 or None)

    assert store.prune(KEY, keep=2) == [1, 2, 3]
    assert store.list_versions(KEY) == [4, 5]
    assert store.prune(KEY, keep=1) == [4]
    assert store.prune(KEY, keep=1) == []
    assert store.read(KEY).number == 5
    with pytest.raises(NotFoundError, match="version 4 .* was pruned"):
        store.read(KEY, version=4)


@pytest.mark.parametrize("keep", [0, -1, True, 1.5])
def test_prune_invalid_keep(store: Store, keep: object) -> None:
    with pytest.raises(InvalidInputError, match="invalid keep"):
        store.prune(KEY, keep=keep)  # type: ignore[arg-type]


def test_prune_missing_object_removes_nothing(store: Store) -> None:
    assert store.prune(KEY, keep=1) == []


def test_uncommitted_version_file_is_replaced(store: Store) -> None:
    # A writer that crashed after renaming version 2 into place but before
    # moving the pointer leaves a version file the pointer does not name.
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=None)
    leftover = encode_version(KEY, 2, {"w": np.full(1, 666.0)}, {})
    write_atomic(_object_dir(store) / "_v000000000002", frame(FileKind.VERSION, leftover))

    assert store.latest_version(KEY) == 1
    assert store.list_versions(KEY) == [1]
    assert store.read(KEY).number == 1

    assert store.commit(KEY, {"w": np.ones(1)}, expected_version=1) == 2
    np.testing.assert_array_equal(store.read(KEY, version=2).arrays["w"], [1.0])


def test_prune_removes_crash_leftovers(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=None)
    directory = _object_dir(store)
    leftover = encode_version(KEY, 2, {"w": np.ones(1)}, {})
    write_atomic(directory / "_v000000000002", frame(FileKind.VERSION, leftover))
    (directory / ".tmp._LATEST.999.abcd").write_bytes(b"partial")

    assert store.prune(KEY, keep=1) == [2]
    assert sorted(os.listdir(directory)) == ["_LATEST", "_LOCK", "_v000000000001"]


def test_read_retries_when_pointer_moves(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for number in range(1, 4):
        store.commit(KEY, {"w": np.full(1, number)}, expected_version=number - 1 or None)
    store.prune(KEY, keep=1)

    # The first pointer read returns version 1, as if a writer committed and
    # pruned between this reader's pointer read and its file open.
    real_read_pointer = Store._read_pointer
    answers = iter([1])

    def stale_then_real(self: Store, directory: Path, key: tuple[str, ...]) -> int | None:
        return next(answers, None) or real_read_pointer(self, directory, key)

    monkeypatch.setattr(Store, "_read_pointer", stale_then_real)
    with caplog.at_level(logging.DEBUG, logger="mpnn_async.store.store"):
        version = store.read(KEY)

    assert version.number == 3
    np.testing.assert_array_equal(version.arrays["w"], [3])
    assert [record.getMessage().split()[0] for record in caplog.records] == ["store.read.retry"]


def test_read_latest_file_removed_by_hand(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(1)}, expected_version=None)
    os.unlink(_object_dir(store) / "_v000000000001")

    with pytest.raises(StoreError, match="removed outside the store API"):
        store.read(KEY)
    with pytest.raises(StoreError, match="removed outside the store API"):
        store.update(KEY, lambda version: ({"w": np.ones(1)}, {}))


def test_put_document_is_idempotent(store: Store) -> None:
    plan = {"partitions": {"p0": [[1, 0], [1, 1]]}, "layers": 2}

    store.put_document(("plans",), "abc123", plan)
    store.put_document(("plans",), "abc123", dict(reversed(list(plan.items()))))

    assert store.get_document(("plans",), "abc123") == plan
    assert store.list_documents(("plans",)) == ["abc123"]


def test_put_document_different_content_rejected(store: Store) -> None:
    store.put_document(("plans",), "abc123", {"layers": 2})
    with pytest.raises(InvalidInputError, match="already exists with different content"):
        store.put_document(("plans",), "abc123", {"layers": 3})
    assert store.get_document(("plans",), "abc123") == {"layers": 2}


def test_put_document_rejects_non_object(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="expected a JSON object"):
        store.put_document(("plans",), "abc", [1, 2])  # type: ignore[arg-type]


def test_get_missing_document_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="'nope' .* not found"):
        store.get_document(("plans",), "nope")
    assert store.list_documents(("plans",)) == []


def test_list_children(store: Store) -> None:
    store.commit(("models", "b", "x"), {"w": np.zeros(1)}, expected_version=None)
    store.commit(("models", "a", "x"), {"w": np.zeros(1)}, expected_version=None)

    assert store.list_children() == ["models"]
    assert store.list_children(("models",)) == ["a", "b"]
    assert store.list_children(("models", "a", "x")) == []
    assert store.list_children(("nothing",)) == []


def test_store_and_version_repr(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros((2, 3), dtype=np.float32)}, {"step": 1}, expected_version=None)

    assert repr(store) == f"<Store root={str(store.root)!r} lock_timeout_s=5>"
    assert repr(store.read(KEY)) == "<Version 1 arrays=[w(2, 3) float32] meta_keys=['step']>"


def test_missing_root_raises_store_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(StoreError, match="does not exist") as info:
        Store(missing)
    assert str(missing) in str(info.value)
    assert "--store" in str(info.value)


def test_root_that_is_a_file_raises_store_error(tmp_path: Path) -> None:
    file_path = tmp_path / "file"
    file_path.write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        Store(file_path)


def test_open_creates_root(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    store = Store.open(root, create=True)
    assert root.is_dir()
    assert store.root == root.resolve()
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "c")


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), True, "5"])
def test_invalid_lock_timeout(store_root: Path, timeout: object) -> None:
    with pytest.raises(InvalidInputError, match="invalid lock_timeout_s"):
        Store(store_root, lock_timeout_s=timeout)  # type: ignore[arg-type]


def test_unwritable_root_raises_store_error() -> None:
    # Root bypasses permission bits, so as root the check runs in a forked
    # child that has switched to the unprivileged user "nobody" (uid 65534).
    with tempfile.TemporaryDirectory() as parent:
        root = Path(parent) / "root"
        root.mkdir()
        os.chmod(parent, 0o755)
        os.chmod(root, 0o555)
        try:
            if os.geteuid() != 0:
                with pytest.raises(StoreError, match="not writable") as info:
                    Store(root)
                assert str(root) in str(info.value)
                return
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.setuid(65534)
                    try:
                        Store(root)
                    except StoreError as error:
                        code = 0 if "not writable" in str(error) and str(root) in str(error) else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        finally:
            os.chmod(root, 0o755)


def test_update_returns_what_read_returns(store: Store) -> None:
    written = store.update(KEY, lambda version: ({"w": np.arange(4.0)}, {"t": (1, 2)}))
    read = store.read(KEY)

    assert written.number == read.number
    assert written.meta == read.meta == {"t": [1, 2]}
    np.testing.assert_array_equal(written.arrays["w"], read.arrays["w"])
