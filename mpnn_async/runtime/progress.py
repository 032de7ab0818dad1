"""Progress events of a job: logged, handed to a callback, and kept in the store for `mpnn status`.

Every event but the final one is also appended to the job's history (`history.py`) for `mpnn plot`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

from mpnn_async.errors import RetryableError
from mpnn_async.runtime.history import append_history
from mpnn_async.store import ModelStore, Store, StoreError

__all__ = ["ProgressEvent", "ProgressRecorder", "read_progress", "progress_key"]

log = logging.getLogger(__name__)

# Old progress versions beyond this many are pruned; the latest one is what status shows.
_KEEP_VERSIONS = 20
# Step events are written to the store at most this often (each write is an fsync);
# evaluations and the final event are always written.
_MIN_WRITE_INTERVAL_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step or evaluation of a job. `accuracy` and `test_loss` are set after an evaluation."""

    job: str
    epoch: int
    step: int
    loss: float
    total_steps: int = 0
    samples_per_s: float = 0.0
    test_loss: float | None = None
    accuracy: float | None = None
    state: str = "running"
    time_s: float = dataclasses.field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        # JSON has no NaN: a loss that is not a number is stored as null.
        return {
            key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in dataclasses.asdict(self).items()
        }


def progress_key(job: str) -> tuple[str, ...]:
    return ("jobs", job, "progress")


class ProgressRecorder:
    """Writes each event to the store and the log; blocking, so async callers use an executor."""

    def __init__(self, model_store: ModelStore, job: str) -> None:
        self._store = model_store.store
        self._model = model_store.model
        self._job = job
        self._count = 0
        self._last_write = float("-inf")
        # Partition name -> id of the worker that reported it ready.
        self.workers: dict[str, str] = {}
        # Partition name -> every replica serving it, and the workers last reported as stragglers.
        self.replicas: dict[str, list[str]] = {}
        self.stragglers: list[str] = []
        # Events not yet appended to the job's history; flushed with each store write.
        self._history_pending: list[ProgressEvent] = []
        # Step of this run's first event, until an append has dropped the stored rows from it on.
        self._history_drop_from_step: int | None = None
        self._history_started = False
        self._history_failures = 0

    def record(self, event: ProgressEvent) -> None:
        if event.accuracy is not None:
            log.info(
                "job.progress job=%s epoch=%d step=%d loss=%.5f test_loss=%.5f accuracy=%.4f",
                event.job, event.epoch, event.step, event.loss, event.test_loss or math.nan, event.accuracy,
            )
        else:
            log.debug(
                "job.progress job=%s step=%d/%d loss=%.5f samples_per_s=%.0f",
                event.job, event.step, event.total_steps, event.loss, event.samples_per_s,
            )
        if event.state == "running":
            # The final event repeats the last evaluation, so the history leaves it out.
            self._history_pending.append(event)
            if not self._history_started and self._history_drop_from_step is None:
                self._history_drop_from_step = event.step
        now = time.monotonic()
        is_routine = event.accuracy is None and event.state == "running"
        if is_routine and now - self._last_write < _MIN_WRITE_INTERVAL_S:
            return
        self._last_write = now
        meta = event.to_dict()
        meta["model"] = self._model
        meta["workers"] = dict(self.workers)
        meta["replicas"] = {partition: list(workers) for partition, workers in self.replicas.items()}
        meta["stragglers"] = list(self.stragglers)
        self._store.update(progress_key(self._job), lambda _previous: ({}, meta))
        self._append_history()
        self._count += 1
        if self._count % _KEEP_VERSIONS == 0:
            self._store.prune(progress_key(self._job), keep=_KEEP_VERSIONS)

    def _append_history(self) -> None:
        events, self._history_pending = self._history_pending, []
        if not events:
            return
        # The first append of this run drops the stored rows from its first step on,
        # because they belong to an earlier run of this job name that it replaces or resumes.
        try:
            append_history(self._store, self._job, events, drop_from_step=self._history_drop_from_step)
        except (StoreError, RetryableError) as error:
            # The history only feeds the plot, so a failed append loses its rows, not the job.
            self._history_failures += 1
            level = logging.WARNING if self._history_failures % 100 == 1 else logging.DEBUG
            log.log(level, "history.append_failed job=%s rows=%d failures=%d error=%s",
                    self._job, len(events), self._history_failures, error)
            return
        self._history_started = True
        self._history_drop_from_step = None


def read_progress(store: Store, job: str) -> dict[str, Any] | None:
    """Return the latest progress record of `job`, or None if it never reported."""
    key = progress_key(job)
    if store.latest_version(key) is None:
        return None
    return store.read(key).meta
