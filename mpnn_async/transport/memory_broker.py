"""The state of the in-process broker: exchanges, bindings, queues and their ready messages.

Every method is synchronous, so on one event loop each one runs without
interruption, the way a broker applies one AMQP method at a time.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import weakref
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from mpnn_async.errors import TransportError
from mpnn_async.transport.base import QueueMismatchError, QueueNotFoundError
from mpnn_async.transport.topic import topic_matches

__all__ = [
    "InProcessBroker",
    "MemoryExchange",
    "MemoryQueue",
    "QueueConsumer",
    "StoredMessage",
    "check_exclusive_owner",
]


class QueueConsumer(Protocol):
    """The consumer side a queue calls: a wake-up when a message is ready, and a stop when the queue goes."""

    def wake(self) -> None: ...

    def stop(self) -> None: ...


_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, InProcessBroker] = weakref.WeakKeyDictionary()

# Routing results are cached per routing key; the cache is dropped when
# bindings change, and when it grows past this many keys.
_MAX_CACHED_ROUTES = 10_000


@dataclasses.dataclass(slots=True)
class StoredMessage:
    """One message in one queue; each queue gets its own copy, because `redelivered` is per queue."""

    routing_key: str
    body: bytes
    headers: Mapping[str, Any]
    persistent: bool
    reply_to: str | None
    correlation_id: str | None
    redelivered: bool = False


@dataclasses.dataclass(slots=True, eq=False)
class MemoryExchange:
    """A topic or fanout exchange: bindings and a cache of routing results."""

    name: str
    kind: Literal["topic", "fanout"]
    # queue name -> binding patterns (ignored by a fanout exchange)
    bindings: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    routes: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def route(self, routing_key: str) -> tuple[str, ...]:
        names = self.routes.get(routing_key)
        if names is None:
            names = tuple(
                queue_name
                for queue_name, patterns in self.bindings.items()
                if self.kind == "fanout" or any(topic_matches(pattern, routing_key) for pattern in patterns)
            )
            if len(self.routes) >= _MAX_CACHED_ROUTES:
                self.routes.clear()
            self.routes[routing_key] = names
        return names


@dataclasses.dataclass(slots=True, eq=False)
class MemoryQueue:
    """A queue: its declared properties, ready messages in order, and consumers."""

    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    # The transport that declared an exclusive queue; None for shared queues.
    owner: object | None
    ready: collections.deque[StoredMessage] = dataclasses.field(default_factory=collections.deque)
    consumers: list[QueueConsumer] = dataclasses.field(default_factory=list)

    def enqueue(self, message: StoredMessage) -> None:
        self.ready.append(message)
        self.wake_consumers()

    def return_to_head(self, message: StoredMessage) -> None:
        message.redelivered = True
        self.ready.appendleft(message)
        self.wake_consumers()

    def wake_consumers(self) -> None:
        for consumer in self.consumers:
            consumer.wake()


class InProcessBroker:
    """Exchanges and queues shared by the `MemoryTransport` objects that use it."""

    def __init__(self) -> None:
        self._exchanges: dict[str, MemoryExchange] = {}
        self._queues: dict[str, MemoryQueue] = {}

    @classmethod
    def for_running_loop(cls) -> InProcessBroker:
        """Return the broker shared by every in-process transport of the running event loop."""
        loop = asyncio.get_running_loop()
        broker = _brokers.get(loop)
        if broker is None:
            broker = _brokers[loop] = cls()
        return broker

    def __repr__(self) -> str:
        return f"<InProcessBroker exchanges={len(self._exchanges)} queues={len(self._queues)}>"

    def has_exchange(self, name: str) -> bool:
        return name in self._exchanges

    def find_queue(self, name: str) -> MemoryQueue | None:
        return self._queues.get(name)

    def get_queue(self, name: str) -> MemoryQueue:
        queue = self._queues.get(name)
        if queue is None:
            raise QueueNotFoundError(f"queue {name!r} not found; declare it before using it")
        return queue

    def declare_exchange(self, name: str, kind: Literal["topic", "fanout"]) -> None:
        existing = self._exchanges.get(name)
        if existing is None:
            self._exchanges[name] = MemoryExchange(name, kind)
        elif existing.kind != kind:
            raise TransportError(f"exchange {name!r} exists with type {existing.kind}, not {kind}")

    def delete_exchange(self, name: str) -> None:
        self._exchanges.pop(name, None)

    def declare_queue(
        self, name: str, *, durable: bool, exclusive: bool, auto_delete: bool, owner: object
    ) -> MemoryQueue:
        queue = self._queues.get(name)
        if queue is None:
            queue = MemoryQueue(name, durable, exclusive, auto_delete, owner if exclusive else None)
            self._queues[name] = queue
            return queue
        requested = {"durable": durable, "exclusive": exclusive, "auto_delete": auto_delete}
        current = {"durable": queue.durable, "exclusive": queue.exclusive, "auto_delete": queue.auto_delete}
        if requested != current:
            raise QueueMismatchError(
                f"queue {name!r} exists with {current}, but the declaration requests {requested}; "
                "declare it with the same properties or delete it first"
            )
        check_exclusive_owner(queue, owner)
        return queue

    def bind(self, exchange_name: str, queue_name: str, pattern: str) -> None:
        exchange = self._exchanges.get(exchange_name)
        if exchange is None:
            raise TransportError(f"exchange {exchange_name!r} not found; connect() declares it")
        exchange.bindings.setdefault(queue_name, set()).add(pattern)
        exchange.routes.clear()

    def delete_queue(self, name: str) -> None:
        """Delete a queue with its messages and bindings, and cancel its consumers, as RabbitMQ does."""
        queue = self._queues.pop(name, None)
        if queue is None:
            return
        for consumer in list(queue.consumers):
            consumer.stop()
        queue.ready.clear()
        for exchange in self._exchanges.values():
            if exchange.bindings.pop(name, None) is not None:
                exchange.routes.clear()

    def route(self, exchange_name: str, routing_key: str) -> list[MemoryQueue]:
        exchange = self._exchanges.get(exchange_name)
        if exchange is None:
            raise TransportError(
                f"exchange {exchange_name!r} not found; it was deleted (purge_namespace) or never declared"
            )
        return [self._queues[name] for name in exchange.route(routing_key)]


def check_exclusive_owner(queue: MemoryQueue, transport: object) -> None:
    if queue.exclusive and queue.owner is not transport:
        raise TransportError(
            f"queue {queue.name!r} is exclusive to another connection; use a queue that is not exclusive"
        )
