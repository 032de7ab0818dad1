"""The transport interface that the runtime sees, with RabbitMQ and in-process implementations.

Semantics every implementation keeps (the contract tests in
`tests/transport/` run against each):

- Two exchanges per namespace: a topic exchange for data and control
  messages (`<namespace>.data`) and a dead-letter exchange (`<namespace>.dlx`)
  that routes every rejected message to the queue `<namespace>.dead`.
- `publish` is mandatory: a message that no queue is bound to receive raises
  `UnroutableError` instead of vanishing. It returns when the broker has
  confirmed the message; callers pipeline by running several publishes
  concurrently (`publish_many`).
- Deliveries are acknowledged by the consumer only after its work is done:
  `ack()`, `requeue()` (back to the queue, marked redelivered), or
  `reject(reason)`, which moves the message to the dead-letter queue with the
  reason in the header `x-mpnn-reject-reason`.
- `prefetch` bounds the unacknowledged deliveries a consumer holds.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Awaitable, Callable, Iterable, Mapping

from mpnn_async.errors import TransportError

__all__ = [
    "Delivery",
    "Handler",
    "Outgoing",
    "REJECT_REASON_HEADER",
    "Transport",
    "UnroutableError",
]

REJECT_REASON_HEADER = "x-mpnn-reject-reason"
REJECT_DETAIL_HEADER = "x-mpnn-reject-detail"


class UnroutableError(TransportError):
    """A mandatory publish matched no queue, so the broker returned it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish."""

    routing_key: str
    body: bytes
    headers: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Persistent messages survive a broker restart when their queue is durable.
    persistent: bool = True
    reply_to: str | None = None
    correlation_id: str | None = None


class Delivery(abc.ABC):
    """A received message; exactly one of ack, requeue or reject must be called."""

    body: bytes
    headers: Mapping[str, Any]
    routing_key: str
    redelivered: bool
    reply_to: str | None
    correlation_id: str | None

    @abc.abstractmethod
    async def ack(self) -> None: ...

    @abc.abstractmethod
    async def requeue(self) -> None: ...

    @abc.abstractmethod
    async def reject(self, reason: str, detail: str = "") -> None:
        """Move the message to the dead-letter queue with `reason` in its headers."""


Handler = Callable[[Delivery], Awaitable[None]]


class Transport(abc.ABC):
    """A connection to the message bus under one namespace (exchange and queue name prefix)."""

    namespace: str

    @property
    def data_exchange(self) -> str:
        return f"{self.namespace}.data"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.dead"

    def queue_name(self, local_name: str) -> str:
        """Return the full queue name for a name local to this namespace."""
        return f"{self.namespace}.{local_name}"

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect and declare the namespace's exchanges and dead-letter queue."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def declare_queue(
        self,
        local_name: str,
        routing_keys: Iterable[str],
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
    ) -> str:
        """Declare a queue bound to the data exchange by `routing_keys`; return its full name.

        Rejected messages of every declared queue go to the dead-letter queue.
        """

    @abc.abstractmethod
    async def delete_queue(self, full_name: str) -> None: ...

    @abc.abstractmethod
    async def publish(self, message: Outgoing) -> None:
        """Publish to the data exchange and wait for the broker's confirm."""

    async def publish_many(self, messages: Iterable[Outgoing]) -> None:
        """Publish several messages with their confirms awaited together."""
        import asyncio

        await asyncio.gather(*(self.publish(message) for message in messages))

    @abc.abstractmethod
    async def consume(self, full_name: str, handler: Handler, *, prefetch: int) -> str:
        """Start delivering messages of a queue to `handler`; return a consumer tag."""

    @abc.abstractmethod
    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; unacknowledged deliveries go back to their queue."""

    @abc.abstractmethod
    async def queue_depth(self, full_name: str) -> int:
        """Return the number of ready (not yet delivered) messages in a queue."""

    @abc.abstractmethod
    async def purge_namespace(self) -> None:
        """Delete every exchange and queue this transport declared (used by tests and `mpnn`)."""

