"""The progress history of a job: one row per step or evaluation, kept as columns for `mpnn plot`.

The latest progress record (`progress.progress_key`) keeps only a few
versions, so the history lives in its own versioned store object,
`("jobs", <job>, "history")`. Each version contains every row so far, as
one array per column. A write appends rows under the key's lock with
`Store.update`, and every 10th write prunes all but the newest two versions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from mpnn_async.errors import CorruptFileError, InvalidInputError
from mpnn_async.store import Store, Version

if TYPE_CHECKING:
    from mpnn_async.runtime.progress import ProgressEvent

__all__ = [
    "HISTORY_COLUMNS",
    "MAX_STEP_ROWS",
    "append_history",
    "history_key",
    "history_rows",
    "read_history",
    "thin_step_rows",
]

log = logging.getLogger(__name__)

# Column name -> dtype. `evaluation` is true for rows written after an evaluation of
# the test split; `test_loss` and `accuracy` are NaN on the other rows.
HISTORY_COLUMNS: dict[str, type[np.generic]] = {
    "step": np.int64,
    "epoch": np.int64,
    "loss": np.float64,
    "samples_per_s": np.float64,
    "test_loss": np.float64,
    "accuracy": np.float64,
    "time_s": np.float64,
    "evaluation": np.bool_,
}
# Every write rewrites the whole history, so step rows beyond this count are thinned
# (every second one dropped) to bound a write at about 0.6 MB; evaluation rows are all kept.
MAX_STEP_ROWS = 10_000
# Old history versions are full copies, so only the newest two are kept, pruned every 10 writes.
_KEEP_VERSIONS = 2
_PRUNE_EVERY_VERSIONS = 10

Columns = dict[str, np.ndarray]


def history_key(job: str) -> tuple[str, ...]:
    return ("jobs", job, "history")


def history_rows(events: Sequence[ProgressEvent]) -> Columns:
    """Return the history columns of `events`, one row per event, in order."""

    def optional(value: float | None) -> float:
        return math.nan if value is None else value

    values = {
        "step": [event.step for event in events],
        "epoch": [event.epoch for event in events],
        "loss": [event.loss for event in events],
        "samples_per_s": [event.samples_per_s for event in events],
        "test_loss": [optional(event.test_loss) for event in events],
        "accuracy": [optional(event.accuracy) for event in events],
        "time_s": [event.time_s for event in events],
        # The scheduler sets test_loss (NaN without a test split) only on evaluation events.
        "evaluation": [event.test_loss is not None or event.accuracy is not None for event in events],
    }
    return {name: np.asarray(values[name], dtype=dtype) for name, dtype in HISTORY_COLUMNS.items()}


def append_history(
    store: Store, job: str, events: Sequence[ProgressEvent], *, drop_from_step: int | None = None
) -> Version | None:
    """Append one row per event to the history of `job`; return the new version (None if no events).

    With `drop_from_step`, stored rows at or after that step are removed first.
    A run that starts at an earlier step than the history ends replaces those
    rows, as a new run of the same job name or a resume from older weights does.
    """
    if not events:
        return None
    new_rows = history_rows(events)
    key = history_key(job)

    def extend(previous: Version | None) -> tuple[Mapping[str, np.ndarray], Mapping[str, object]]:
        columns = new_rows
        if previous is not None:
            stored = _checked_columns(previous.arrays, key)
            if drop_from_step is not None:
                keep = stored["step"] < drop_from_step
                if not keep.all():
                    log.info("history.replace job=%s from_step=%d rows=%d", job, drop_from_step, int((~keep).sum()))
                stored = {name: column[keep] for name, column in stored.items()}
            columns = {name: np.concatenate([stored[name], new_rows[name]]) for name in HISTORY_COLUMNS}
        return thin_step_rows(columns, max_step_rows=MAX_STEP_ROWS), {"job": job}

    version = store.update(key, extend)
    if version.number % _PRUNE_EVERY_VERSIONS == 0:
        store.prune(key, keep=_KEEP_VERSIONS)
    return version


def thin_step_rows(columns: Mapping[str, np.ndarray], *, max_step_rows: int) -> Columns:
    """Drop every second step row while there are more than `max_step_rows`; keep evaluations and the last row."""
    if max_step_rows < 1:
        raise InvalidInputError(f"invalid max_step_rows {max_step_rows!r}: must be >= 1")
    keep = np.ones(len(columns["step"]), dtype=bool)
    while True:
        step_rows = np.flatnonzero(keep & ~columns["evaluation"])
        if len(step_rows) <= max_step_rows:
            break
        # Counting back from the newest step row, every second one goes, so the curve
        # still ends at the latest step.
        keep[step_rows[-2::-2]] = False
    return {name: np.asarray(column)[keep] for name, column in columns.items()}


def read_history(store: Store, job: str) -> Columns | None:
    """Return the history columns of `job` (see HISTORY_COLUMNS), or None if it has none."""
    key = history_key(job)
    if store.latest_version(key) is None:
        return None
    return _checked_columns(store.read(key).arrays, key)


def _checked_columns(arrays: Mapping[str, np.ndarray], key: Iterable[str]) -> Columns:
    missing = sorted(set(HISTORY_COLUMNS) - set(arrays))
    lengths = {len(arrays[name]) for name in HISTORY_COLUMNS if name in arrays}
    if missing or len(lengths) > 1:
        raise CorruptFileError(
            f"store object {'/'.join(key)} is not a progress history: missing columns {missing}, "
            f"column lengths {sorted(lengths)}; delete that directory to start a new history"
        )
    return {name: np.asarray(arrays[name], dtype=dtype) for name, dtype in HISTORY_COLUMNS.items()}
