"""Sources of a job's progress events for a watcher: the broker, or the store's latest record."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
import uuid
from typing import Any

from mpnn_async.observe.events import decode_progress, event_from_dict
from mpnn_async.runtime.progress import ProgressEvent, read_progress
from mpnn_async.runtime.protocol import progress_routing_key
from mpnn_async.store import StaleReadError, Store
from mpnn_async.transport.base import Delivery, Transport
from mpnn_async.wire import CodecError, RejectReason

__all__ = ["BrokerProgressSource", "ProgressSource", "StoreProgressSource"]

log = logging.getLogger(__name__)

# Unacknowledged deliveries per watcher. Each is acknowledged as soon as it is queued.
_PREFETCH = 64


class ProgressSource(abc.ABC):
    """A stream of one job's progress events."""

    @abc.abstractmethod
    async def next_event(self, *, timeout_s: float | None) -> ProgressEvent | None:
        """Return the next event, or None if none came within `timeout_s` (None waits without limit)."""


class BrokerProgressSource(ProgressSource):
    """Events from the broker, on a queue of this watcher's own bound to `<job>.progress`.

    The queue is exclusive and auto-deleted, so the broker removes it when the
    watcher's connection closes, even after a crash. Progress events are
    published without `mandatory`, so only events published after `start()`
    bound the queue arrive here. A malformed message goes to the dead-letter
    queue with the codec's reason.
    """

    def __init__(self, *, transport: Transport, job: str) -> None:
        self._transport = transport
        self._job = job
        self._events: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        self._rejected = 0
        self.queue: str | None = None
        self._consumer_tag: str | None = None

    def __repr__(self) -> str:
        return (
            f"<BrokerProgressSource job={self._job} queue={self.queue} "
            f"waiting={self._events.qsize()} rejected={self._rejected}>"
        )

    async def start(self) -> str:
        """Declare and bind the queue, start consuming, and return the queue's full name."""
        local_name = f"watch.{self._job}.{uuid.uuid4().hex[:8]}"
        self.queue = await self._transport.declare_queue(
            local_name, [progress_routing_key(self._job)], durable=False, exclusive=True, auto_delete=True
        )
        self._consumer_tag = await self._transport.consume(self.queue, self._on_message, prefetch=_PREFETCH)
        log.info("watch.started job=%s queue=%s", self._job, self.queue)
        return self.queue

    async def close(self) -> None:
        """Stop consuming and delete the queue (the broker would delete it with the connection anyway)."""
        if self._consumer_tag is not None:
            await self._transport.cancel(self._consumer_tag)
            self._consumer_tag = None
        if self.queue is not None:
            await self._transport.delete_queue(self.queue)
            log.info("watch.stopped job=%s queue=%s", self._job, self.queue)
            self.queue = None

    async def next_event(self, *, timeout_s: float | None) -> ProgressEvent | None:
        try:
            return await asyncio.wait_for(self._events.get(), timeout=timeout_s)
        except TimeoutError:
            return None

    async def _on_message(self, delivery: Delivery) -> None:
        try:
            event = decode_progress(delivery.body, max_size_bytes=self._transport.max_message_bytes)
            if event.job != self._job:
                raise CodecError(
                    RejectReason.INVALID_FIELD, f"event of job {event.job!r} on the queue of job {self._job!r}"
                )
        except CodecError as error:
            self._rejected += 1
            log.warning(
                "message.rejected queue=%s routing_key=%s reason=%s detail=%s rejected=%d",
                delivery.queue, delivery.routing_key, error.reason, error, self._rejected,
            )
            await delivery.reject(str(error.reason), str(error))
            return
        self._events.put_nowait(event)
        await delivery.ack()


class StoreProgressSource(ProgressSource):
    """Events read from the store's latest progress record of the job, polled every `poll_interval_s`.

    Each record is returned once. The scheduler writes step events at most once
    a second, and a poll reads only the latest record, so records written
    between two polls, evaluations included, are skipped except the latest.
    """

    def __init__(self, *, store: Store, job: str, poll_interval_s: float = 1.0) -> None:
        self._store = store
        self._job = job
        self._poll_interval_s = poll_interval_s
        self._last_record: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<StoreProgressSource job={self._job} store={self._store.root} poll_interval_s={self._poll_interval_s:g}>"

    async def next_event(self, *, timeout_s: float | None) -> ProgressEvent | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            record = await asyncio.to_thread(self._read)
            if record is not None and record != self._last_record:
                self._last_record = record
                return event_from_dict(record)
            if deadline is not None and time.monotonic() >= deadline:
                return None
            delay_s = self._poll_interval_s
            if deadline is not None:
                delay_s = max(0.0, min(delay_s, deadline - time.monotonic()))
            await asyncio.sleep(delay_s)

    def _read(self) -> dict[str, Any] | None:
        try:
            return read_progress(self._store, self._job)
        except StaleReadError:
            # The scheduler pruned the version under the reader on every attempt; poll again.
            log.debug("watch.read_retry job=%s", self._job)
            return self._last_record
