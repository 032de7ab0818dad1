"""The per-job progress history: every event kept as columns, across prunes and runs."""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import pytest

from mpnn_async.runtime.history import (
    HISTORY_COLUMNS,
    append_history,
    history_key,
    history_rows,
    read_history,
    thin_step_rows,
)
from mpnn_async.runtime.progress import ProgressEvent, ProgressRecorder, progress_key, read_progress
from mpnn_async.store import ModelStore, Store
from mpnn_async.store.layout import LOCK_FILE
from mpnn_async.store.locking import hold_lock


@pytest.fixture
def store(tmp_path):
    return Store.open(tmp_path / "store", create=True, lock_timeout_s=5.0)


def recorder(store: Store, job: str = "demo") -> ProgressRecorder:
    return ProgressRecorder(ModelStore(store, job), job)


def step(step: int, loss: float = 1.0) -> ProgressEvent:
    return ProgressEvent(job="demo", epoch=0, step=step, loss=loss, total_steps=100, samples_per_s=50.0)


def evaluation(step: int, accuracy: float, state: str = "running") -> ProgressEvent:
    return ProgressEvent(
        job="demo", epoch=0, step=step, loss=0.5, total_steps=100, test_loss=0.4, accuracy=accuracy, state=state
    )


def test_history_accumulates_and_survives_pruning(store):
    progress = recorder(store)

    # Every evaluation forces a store write, so the latest-progress object gets at least 62
    # versions and is pruned every 20. The history must still contain every event.
    for index in range(1, 61):
        progress.record(step(index, loss=1.0 / index))
        progress.record(evaluation(index, accuracy=index / 100))
    progress.record(evaluation(60, accuracy=0.6, state="finished"))

    history = read_history(store, "demo")
    assert store.list_versions(progress_key("demo"))[0] > 20
    assert store.list_versions(history_key("demo"))[0] > 50
    assert read_progress(store, "demo")["state"] == "finished"
    assert list(history) == list(HISTORY_COLUMNS)
    assert len(history["step"]) == 120
    assert history["step"].tolist() == [index for index in range(1, 61) for _ in range(2)]
    assert history["evaluation"].tolist() == [False, True] * 60
    assert np.allclose(history["loss"][~history["evaluation"]], [1.0 / index for index in range(1, 61)])
    assert np.allclose(history["accuracy"][history["evaluation"]], [index / 100 for index in range(1, 61)])
    assert np.isnan(history["accuracy"][~history["evaluation"]]).all()


def test_rate_limited_steps_reach_history(store):
    progress = recorder(store)

    # Steps within one second are not written on their own; the evaluation write flushes them.
    for index in range(1, 11):
        progress.record(step(index))
    assert read_progress(store, "demo")["step"] == 1
    progress.record(evaluation(10, accuracy=0.9))

    history = read_history(store, "demo")
    assert history["step"].tolist() == list(range(1, 11)) + [10]


def test_new_run_replaces_later_rows(store):
    first = recorder(store)
    for index in range(1, 6):
        first.record(evaluation(index, accuracy=0.1 * index))

    # A resume from step 3 (older weights) keeps steps 1-3 and replaces 4-5.
    resumed = recorder(store)
    resumed.record(evaluation(4, accuracy=0.99))
    resumed.record(evaluation(5, accuracy=0.98))

    history = read_history(store, "demo")
    assert history["step"].tolist() == [1, 2, 3, 4, 5]
    assert history["accuracy"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.99, 0.98])

    # A run from step 1 replaces everything.
    again = recorder(store)
    again.record(evaluation(1, accuracy=0.5))
    assert read_history(store, "demo")["step"].tolist() == [1]


def test_broken_history_does_not_stop_job(store, caplog):
    store.commit(history_key("demo"), {"step": np.arange(3)}, expected_version=None)
    progress = recorder(store)

    for index in range(1, 4):
        progress.record(evaluation(index, accuracy=0.5))

    assert read_progress(store, "demo")["step"] == 3
    failures = [record for record in caplog.records if "history.append_failed" in record.getMessage()]
    assert len(failures) == 1
    assert "is not a progress history" in failures[0].getMessage()


@contextlib.contextmanager
def lock_held_by_thread(path):
    """Hold the store lock `path` in another thread for the block, as a concurrent writer would."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with hold_lock(path, timeout_s=5):
            held.set()
            release.wait(timeout=30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(timeout=5)
    try:
        yield
    finally:
        release.set()
        thread.join(timeout=5)


def test_failed_first_append_still_replaces_old_run(tmp_path):
    store = Store.open(tmp_path / "store", create=True, lock_timeout_s=0.2)
    old = recorder(store)
    for index in range(1, 6):
        old.record(evaluation(index, accuracy=0.1))
    new = recorder(store)

    with lock_held_by_thread(store.root.joinpath(*history_key("demo"), LOCK_FILE)):
        new.record(evaluation(1, accuracy=0.9))
    assert read_progress(store, "demo")["step"] == 1
    assert read_history(store, "demo")["step"].tolist() == [1, 2, 3, 4, 5]

    new.record(evaluation(2, accuracy=0.8))
    new.record(evaluation(3, accuracy=0.7))

    history = read_history(store, "demo")
    assert history["step"].tolist() == [2, 3]
    assert history["accuracy"].tolist() == pytest.approx([0.8, 0.7])


def test_unknown_job_has_no_history(store):
    assert read_history(store, "ghost") is None
    assert append_history(store, "ghost", []) is None
    assert read_history(store, "ghost") is None


def test_thinning_keeps_evaluations_and_last_step():
    events = [step(index) for index in range(1, 101)] + [evaluation(100, accuracy=0.9)]
    columns = history_rows(events)

    thinned = thin_step_rows(columns, max_step_rows=30)

    step_rows = thinned["step"][~thinned["evaluation"]]
    assert 15 <= len(step_rows) <= 30
    assert step_rows[-1] == 100
    assert np.all(np.diff(step_rows) > 0)
    assert thinned["evaluation"].sum() == 1
    assert all(len(column) == len(thinned["step"]) for column in thinned.values())


def test_thinning_two_rows_into_one():
    thinned = thin_step_rows(history_rows([step(1), step(2)]), max_step_rows=1)

    assert thinned["step"].tolist() == [2]


def test_rows_mark_evaluations_without_test_split():
    # Without a test split the scheduler sends test_loss NaN and no accuracy.
    no_test = ProgressEvent(job="demo", epoch=0, step=5, loss=0.5, test_loss=math.nan)

    rows = history_rows([step(5), no_test])

    assert rows["evaluation"].tolist() == [False, True]
