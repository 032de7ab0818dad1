"""Follow one job's progress events until it finishes."""

from __future__ import annotations

from collections.abc import Callable

from mpnn_async.errors import InvalidInputError
from mpnn_async.observe.display import ProgressDisplay
from mpnn_async.observe.events import ENDED
from mpnn_async.observe.sources import ProgressSource
from mpnn_async.runtime.progress import ProgressEvent

__all__ = ["JobNotFoundError", "follow_job"]


class JobNotFoundError(InvalidInputError):
    """No progress event of the job arrived in time and the store has no record of it."""


async def follow_job(
    source: ProgressSource,
    display: ProgressDisplay,
    *,
    timeout_s: float,
    on_silence: Callable[[], None],
) -> ProgressEvent:
    """Show every event of `source` on `display` until one has state `finished` or `failed`; return that one.

    If no event arrives within `timeout_s`, `on_silence` runs once: it raises
    JobNotFoundError for an unknown job, or reports why nothing came, and then
    the wait goes on without a limit.
    """
    event = await source.next_event(timeout_s=timeout_s)
    if event is None:
        on_silence()
        event = await source.next_event(timeout_s=None)
    while True:
        assert event is not None, "next_event returns an event when it waits without a limit"
        display.show(event)
        if event.state in ENDED:
            return event
        event = await source.next_event(timeout_s=None)
