"""The store under real concurrent processes, crashes (SIGKILL) and lock contention.

Children are started with the `fork` method, so they start in milliseconds
and run functions of this module without importing it again. Each child uses
only the store, NumPy and `multiprocessing` events.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import time
from typing import Any

import numpy as np
import pytest

from mpnn_async.store import ConflictError, LockTimeoutError, Store, Version
from mpnn_async.store import store as store_module

CONTEXT = multiprocessing.get_context("fork")
KEY = ("models", "m", "partitions", "p0")
JOIN_TIMEOUT_S = 30.0


def _versioned_arrays(number: int, size: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Return arrays and meta whose every value encodes the version `number`."""
    arrays = {
        "values": np.full(size, float(number)),
        "scaled": np.arange(size // 8, dtype=np.int64) * number,
        "number": np.array(number, dtype=np.int64),
    }
    return arrays, {"number": number, "size": size}


def _assert_consistent(version: Version, size: int) -> None:
    number = version.number
    assert version.meta == {"number": number, "size": size}
    assert int(version.arrays["number"]) == number
    assert version.arrays["values"].shape == (size,)
    assert np.all(version.arrays["values"] == number), f"version {number} has mixed values"
    np.testing.assert_array_equal(
        version.arrays["scaled"], np.arange(size // 8, dtype=np.int64) * number
    )


def _next_version(size: int):  # type: ignore[no-untyped-def]
    def make(version: Version | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _versioned_arrays(1 if version is None else version.number + 1, size)

    return make


def _join_all(processes: list[Any]) -> None:
    for process in processes:
        process.join(JOIN_TIMEOUT_S)
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert [process.exitcode for process in processes] == [0] * len(processes)


# Children. They run in forked processes; an exception ends them with exit code 1.


def _increment_counter(root: str, count: int, start: Any) -> None:
    store = Store(root, lock_timeout_s=JOIN_TIMEOUT_S)

    def increment(version: Version | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        assert version is not None
        return {"counter": version.arrays["counter"] + 1}, {}

    start.wait()
    for _ in range(count):
        store.update(KEY, increment)


def _commit_until_killed(root: str, size: int, committed: Any) -> None:
    store = Store(root, lock_timeout_s=JOIN_TIMEOUT_S)
    make = _next_version(size)
    while True:
        store.update(KEY, make)
        committed.set()


def _commit_and_prune(root: str, size: int, committed: Any, stop: Any) -> None:
    store = Store(root, lock_timeout_s=JOIN_TIMEOUT_S)
    make = _next_version(size)
    while not stop.is_set():
        store.update(KEY, make)
        store.prune(KEY, keep=1)
        committed.set()


def _hold_lock(root: str, holding: Any, release: Any) -> None:
    store = Store(root, lock_timeout_s=JOIN_TIMEOUT_S)

    def wait_inside(version: Version | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        holding.set()
        release.wait(JOIN_TIMEOUT_S)
        return {"w": np.ones(4)}, {}

    store.update(KEY, wait_inside)


# Tests.


def test_eight_processes_increment_exactly(store: Store) -> None:
    processes_count, increments = 8, 100
    store.commit(KEY, {"counter": np.zeros(16, dtype=np.int64)}, expected_version=None)
    start = CONTEXT.Event()
    processes = [
        CONTEXT.Process(target=_increment_counter, args=(str(store.root), increments, start))
        for _ in range(processes_count)
    ]
    for process in processes:
        process.start()
    start.set()
    _join_all(processes)

    latest = store.read(KEY)
    total = processes_count * increments
    np.testing.assert_array_equal(latest.arrays["counter"], np.full(16, total))
    assert latest.number == 1 + total
    assert store.list_versions(KEY) == list(range(1, total + 2))


def test_sigkilled_writer_leaves_complete_version(store: Store) -> None:
    # 256k float64 values make each version file about 2.3 MB, so a kill
    # often lands while a temporary file is being written.
    size = 1 << 18
    # At least 24 trials, and more (up to 80) until one kill has landed mid-write.
    min_trials, max_trials = 24, 80
    rng = random.Random(20240611)
    quick = Store(store.root, lock_timeout_s=1.0)
    store.commit(KEY, *_versioned_arrays(1, size), expected_version=None)
    directory = store.root.joinpath(*KEY)
    kills_mid_write = 0
    trial = 0

    while trial < min_trials or (kills_mid_write == 0 and trial < max_trials):
        trial += 1
        before = store.latest_version(KEY)
        assert before is not None
        committed = CONTEXT.Event()
        writer = CONTEXT.Process(
            target=_commit_until_killed, args=(str(store.root), size, committed)
        )
        writer.start()
        assert committed.wait(JOIN_TIMEOUT_S), f"trial {trial}: writer never committed"
        delay_s = rng.uniform(0.0, 0.06)
        time.sleep(delay_s)
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(JOIN_TIMEOUT_S)
        assert writer.exitcode == -signal.SIGKILL

        if any(name.startswith(".tmp.") for name in os.listdir(directory)):
            kills_mid_write += 1
        survivor = store.read(KEY)
        assert survivor.number > before, f"trial {trial}, delay {delay_s:.3f} s"
        _assert_consistent(survivor, size)

        # The killed writer's lock died with it: a commit succeeds at once.
        started = time.monotonic()
        after = quick.update(KEY, _next_version(size))
        assert time.monotonic() - started < 1.0
        assert after.number == survivor.number + 1
        _assert_consistent(store.read(KEY), size)
        quick.prune(KEY, keep=2)
        assert not [name for name in os.listdir(directory) if name.startswith(".tmp.")]

    assert kills_mid_write >= 1, "no kill landed during a write; the test did not test a crash"


def test_reader_survives_concurrent_prune(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    # A stress run: every read must be complete and numbers never go down.
    # Whether a read loses the race here depends on timing (1 to 3 times per
    # second on a 2-core machine), so the retry itself is forced in
    # test_reader_retries_when_version_pruned_under_it.
    size = 4096
    store.commit(KEY, *_versioned_arrays(1, size), expected_version=None)
    committed, stop = CONTEXT.Event(), CONTEXT.Event()
    writer = CONTEXT.Process(
        target=_commit_and_prune, args=(str(store.root), size, committed, stop)
    )
    writer.start()
    numbers = []
    try:
        assert committed.wait(JOIN_TIMEOUT_S)
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="mpnn_async.store.store"):
            while True:
                elapsed_s = time.monotonic() - started
                if elapsed_s > 3.0 or (elapsed_s > 1.0 and len(caplog.records) >= 3):
                    break
                version = store.read(KEY)
                _assert_consistent(version, size)
                numbers.append(version.number)
    finally:
        stop.set()
        _join_all([writer])

    assert numbers == sorted(numbers), "a reader saw the version number go down"
    assert numbers[-1] > numbers[0] + 10, "the writer committed too little to test anything"


def _commit_twice_and_prune(root: str, size: int) -> None:
    store = Store(root, lock_timeout_s=JOIN_TIMEOUT_S)
    make = _next_version(size)
    store.update(KEY, make)
    store.update(KEY, make)
    store.prune(KEY, keep=1)


def test_reader_retries_when_version_pruned_under_it(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Force the losing interleaving: after the reader has read the pointer and
    # before it opens the version file, another process commits and prunes it.
    size = 4096
    store.commit(KEY, *_versioned_arrays(1, size), expected_version=None)
    real_open_frame = store_module.open_frame
    interleaved = []

    def open_after_other_writer(path: Any, **kwargs: Any) -> Any:
        if not interleaved and os.path.basename(path).startswith("_v"):
            interleaved.append(path)
            writer = CONTEXT.Process(target=_commit_twice_and_prune, args=(str(store.root), size))
            writer.start()
            _join_all([writer])
            assert writer.exitcode == 0
        return real_open_frame(path, **kwargs)

    monkeypatch.setattr(store_module, "open_frame", open_after_other_writer)
    with caplog.at_level(logging.DEBUG, logger="mpnn_async.store.store"):
        version = store.read(KEY)

    retries = [r for r in caplog.records if r.getMessage().startswith("store.read.retry")]
    assert interleaved, "the reader never opened a version file"
    assert retries, "the reader did not retry after its version file was pruned"
    assert version.number == 3
    _assert_consistent(version, size)


def test_lock_held_by_other_process_times_out(store: Store) -> None:
    store.commit(KEY, {"w": np.zeros(4)}, expected_version=None)
    holding, release = CONTEXT.Event(), CONTEXT.Event()
    holder = CONTEXT.Process(target=_hold_lock, args=(str(store.root), holding, release))
    holder.start()
    try:
        assert holding.wait(JOIN_TIMEOUT_S)
        impatient = Store(store.root, lock_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as info:
            impatient.commit(KEY, {"w": np.full(4, 2.0)}, expected_version=1)
        elapsed_s = time.monotonic() - started
    finally:
        release.set()
        _join_all([holder])

    assert 0.5 <= elapsed_s < 1.5
    assert str(store.root.joinpath(*KEY) / "_LOCK") in str(info.value)
    assert "0.5 s" in str(info.value)
    # The holder committed version 2, so the version the caller read is stale.
    assert store.latest_version(KEY) == 2
    with pytest.raises(ConflictError):
        impatient.commit(KEY, {"w": np.full(4, 2.0)}, expected_version=1)
    assert impatient.commit(KEY, {"w": np.full(4, 2.0)}, expected_version=2) == 3
