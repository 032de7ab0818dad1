"""Show a job's progress events: a live bar on a terminal, `key=value` lines elsewhere.

Plain lines (for logs, pipes and CI) are one per evaluation, one when the
job finishes, and one for the first step and then at most every
`interval_s` seconds of job time:

    job.progress job=digits epoch=1 step=30/540 loss=0.3120 samples_per_s=2417 eta_s=9
    job.evaluated job=digits epoch=1 step=45/540 train_loss=0.6810 test_loss=0.2474 accuracy=0.9304
    job.finished job=digits epoch=12 step=540/540 train_loss=0.0037 test_loss=0.1034 accuracy=0.9666

Epochs count from 1 here, while the events count them from 0.
"""

from __future__ import annotations

import abc
import os
from types import TracebackType
from typing import Self, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from mpnn_async.observe.events import ENDED, is_evaluation
from mpnn_async.observe.tracker import ProgressTracker, format_number
from mpnn_async.runtime.progress import ProgressEvent

__all__ = [
    "DEFAULT_INTERVAL_S",
    "PlainProgressDisplay",
    "ProgressDisplay",
    "RichProgressDisplay",
    "open_display",
]

DEFAULT_INTERVAL_S = 10.0


class ProgressDisplay(abc.ABC):
    """Shows the events of one job as they come; use it as a context manager."""

    def __init__(self) -> None:
        self.tracker = ProgressTracker()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    @abc.abstractmethod
    def show(self, event: ProgressEvent) -> None: ...

    def close(self) -> None:
        """Release the terminal, if the display took it."""


class PlainProgressDisplay(ProgressDisplay):
    """Writes greppable `key=value` lines (see the module docstring) to `stream`."""

    def __init__(self, *, stream: TextIO, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        super().__init__()
        self._stream = stream
        self._interval_s = interval_s
        self._last_line_time_s: float | None = None

    def __repr__(self) -> str:
        return f"<PlainProgressDisplay interval_s={self._interval_s:g} {self.tracker!r}>"

    def show(self, event: ProgressEvent) -> None:
        self.tracker.update(event)
        if event.state in ENDED:
            self._write(finished_line(event))
        elif is_evaluation(event):
            self._write(evaluation_line(event))
            self._last_line_time_s = event.time_s
        elif self._last_line_time_s is None or event.time_s - self._last_line_time_s >= self._interval_s:
            self._write(step_line(self.tracker, event))
            self._last_line_time_s = event.time_s

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


class RichProgressDisplay(ProgressDisplay):
    """A live `rich` progress bar with loss, accuracy, samples/s and ETA; evaluations print above it."""

    def __init__(self, *, console: Console) -> None:
        super().__init__()
        self._console = console
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            # Events may come from the event loop at every step; the bar redraws 4 times a second.
            refresh_per_second=4,
        )
        self._task: TaskID | None = None
        self._is_running = False

    def __repr__(self) -> str:
        return f"<RichProgressDisplay running={self._is_running} {self.tracker!r}>"

    def show(self, event: ProgressEvent) -> None:
        self.tracker.update(event)
        if self._task is None:
            self._progress.start()
            self._is_running = True
            self._task = self._progress.add_task(event.job, total=None, metrics="")
        total = event.total_steps or None
        self._progress.update(
            self._task,
            description=f"{event.job} epoch {event.epoch + 1}",
            total=total,
            completed=event.step,
            metrics=self._metrics(),
        )
        if event.state in ENDED:
            self.close()
            self._console.print(_human_line(event.state, event))
        elif is_evaluation(event):
            self._progress.console.print(_human_line("evaluated", event))

    def close(self) -> None:
        if self._is_running:
            self._progress.stop()
            self._is_running = False

    def _metrics(self) -> str:
        tracker = self.tracker
        evaluation = tracker.last_evaluation
        loss = None if tracker.last_step is None else tracker.last_step.loss
        accuracy = None if evaluation is None else evaluation.accuracy
        samples_per_s = tracker.samples_per_s
        parts = [
            f"loss {format_number(loss, 4)}" if loss is not None else "loss -",
            f"acc {format_number(accuracy, 4)}" if accuracy is not None else "acc -",
            f"{samples_per_s:,.0f} samples/s" if samples_per_s is not None else "- samples/s",
            f"ETA {_clock(tracker.eta_s)}",
        ]
        return "  ".join(parts)


def open_display(
    *, stream: TextIO, plain: bool = False, interval_s: float = DEFAULT_INTERVAL_S
) -> ProgressDisplay:
    """Return a live bar when `stream` is a terminal (and `plain` is false), else plain lines."""
    if plain or not _is_terminal(stream):
        return PlainProgressDisplay(stream=stream, interval_s=interval_s)
    return RichProgressDisplay(console=Console(file=stream))


def step_line(tracker: ProgressTracker, event: ProgressEvent) -> str:
    samples_per_s = tracker.samples_per_s
    eta_s = tracker.eta_s
    return (
        f"job.progress job={event.job} epoch={event.epoch + 1} step={event.step}/{event.total_steps} "
        f"loss={format_number(event.loss, 4)} "
        f"samples_per_s={'n/a' if samples_per_s is None else f'{samples_per_s:.0f}'} "
        f"eta_s={'n/a' if eta_s is None else f'{eta_s:.0f}'}"
    )


def evaluation_line(event: ProgressEvent) -> str:
    return f"job.evaluated {_result_fields(event)}"


def finished_line(event: ProgressEvent) -> str:
    return f"job.{event.state} {_result_fields(event)}"


def _result_fields(event: ProgressEvent) -> str:
    return (
        f"job={event.job} epoch={event.epoch + 1} step={event.step}/{event.total_steps} "
        f"train_loss={format_number(event.loss, 4)} test_loss={format_number(event.test_loss, 4)} "
        f"accuracy={format_number(event.accuracy, 4)}"
    )


def _human_line(what: str, event: ProgressEvent) -> str:
    return (
        f"{event.job} {what}: epoch {event.epoch + 1}, step {event.step}/{event.total_steps}, "
        f"train loss {format_number(event.loss, 4)}, test loss {format_number(event.test_loss, 4)}, "
        f"test accuracy {format_number(event.accuracy, 4)}"
    )


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        is_tty = stream.isatty()
    except (AttributeError, ValueError):
        # A replaced or closed stream is not a terminal.
        is_tty = False
    return is_tty and os.environ.get("TERM") != "dumb"
