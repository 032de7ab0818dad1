"""The numbers a progress display shows, computed from the events received so far."""

from __future__ import annotations

import math

from mpnn_async.observe.events import FINISHED, is_evaluation
from mpnn_async.runtime.progress import ProgressEvent

__all__ = ["ProgressTracker", "format_number"]

# Weight of the newest step in the smoothed samples/s; each step's own value is noisy.
_SAMPLES_PER_S_SMOOTHING = 0.2


class ProgressTracker:
    """The latest step and evaluation of one job, its smoothed throughput and its ETA.

    Rates use the scheduler's `time_s` stamps, not the watcher's clock, so the
    same events always give the same numbers. A watcher that joins a running
    job measures its step rate from the first event it receives.
    """

    def __init__(self) -> None:
        self.latest: ProgressEvent | None = None
        self.last_step: ProgressEvent | None = None
        self.last_evaluation: ProgressEvent | None = None
        self._first_step: ProgressEvent | None = None
        self._samples_per_s: float | None = None

    def __repr__(self) -> str:
        step = None if self.latest is None else self.latest.step
        return f"<ProgressTracker step={step} eta_s={self.eta_s} finished={self.is_finished}>"

    def update(self, event: ProgressEvent) -> None:
        self.latest = event
        if is_evaluation(event):
            self.last_evaluation = event
            return
        self.last_step = event
        if self._first_step is None:
            self._first_step = event
        if event.samples_per_s > 0:
            previous = self._samples_per_s
            self._samples_per_s = (
                event.samples_per_s
                if previous is None
                else previous + _SAMPLES_PER_S_SMOOTHING * (event.samples_per_s - previous)
            )

    @property
    def is_finished(self) -> bool:
        return self.latest is not None and self.latest.state == FINISHED

    @property
    def samples_per_s(self) -> float | None:
        return self._samples_per_s

    @property
    def steps_per_s(self) -> float | None:
        """Steps per second from the first step event seen to the latest event, evaluations included."""
        first, latest = self._first_step, self.latest
        if first is None or latest is None:
            return None
        elapsed_s = latest.time_s - first.time_s
        if elapsed_s <= 0 or latest.step <= first.step:
            return None
        return (latest.step - first.step) / elapsed_s

    @property
    def eta_s(self) -> float | None:
        """Seconds until the last step at the rate so far; None when the total or the rate is unknown."""
        latest = self.latest
        if latest is None or latest.total_steps == 0:
            return None
        if self.is_finished or latest.step >= latest.total_steps:
            return 0.0
        rate = self.steps_per_s
        return None if rate is None else (latest.total_steps - latest.step) / rate


def format_number(value: float | None, digits: int) -> str:
    """Return `value` with `digits` decimals, or `n/a` for None and NaN."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"
