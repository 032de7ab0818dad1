"""The transport interface that the runtime uses, with RabbitMQ and in-process implementations.

Semantics every implementation keeps (the contract tests in
`tests/transport/` run against each):

- Two exchanges per namespace: a topic exchange for data and control
  messages (`<namespace>.data`) and a dead-letter exchange (`<namespace>.dlx`)
  that routes every rejected message to the queue `<namespace>.dead`.
- `publish` is mandatory by default: a message that no queue is bound to
  receive raises `UnroutableError` instead of vanishing (`Outgoing.mandatory`
  turns this off for messages that may have no consumer). It returns when the broker has
  confirmed the message; callers pipeline by running several publishes
  concurrently (`publish_many`).
- `max_message_bytes` is the broker's maximum message size (RabbitMQ's
  `max_message_size`). A body over it travels as several chunk messages and
  reaches the handler whole, as one delivery whose ack, requeue or reject
  settles every chunk (`chunking`, `reassembly`). A body that would need more
  than `MAX_CHUNKS_PER_MESSAGE` chunks raises `MessageTooLargeError` before
  anything is sent. A consumer needs a prefetch of at least the chunk count
  plus the deliveries its handler holds, and the chunks of one message must
  all reach one consumer: chunked messages are for queues with one consumer.
- Deliveries are acknowledged by the consumer only after its work is done.
  `ack()` removes the message, `requeue()` puts it back at the front of the
  queue marked redelivered, and `reject(reason)` moves it to the dead-letter
  queue with the reason in the header `x-mpnn-reject-reason`. NOTE: RabbitMQ puts a requeued
  message back at its original position and the in-process transport at the
  head; the two differ only when requeued messages wait behind each other.
- `prefetch` bounds the unacknowledged deliveries a consumer holds.
- One consumer calls its handler for one delivery at a time, in queue order:
  the next call starts when the previous one returns, whether or not that
  delivery was settled. A handler may keep a delivery and settle it later, so
  up to `prefetch` deliveries can be held at once.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Self

from mpnn_async.errors import InvalidInputError, TransportError

__all__ = [
    "HANDLER_ERROR_REASON",
    "MAX_CHUNKS_PER_MESSAGE",
    "REJECT_DETAIL_HEADER",
    "REJECT_QUEUE_HEADER",
    "REJECT_REASON_HEADER",
    "Delivery",
    "Handler",
    "MessageTooLargeError",
    "Outgoing",
    "QueueMismatchError",
    "QueueNotFoundError",
    "Transport",
    "UnroutableError",
    "call_handler",
]

log = logging.getLogger(__name__)

REJECT_REASON_HEADER = "x-mpnn-reject-reason"
REJECT_DETAIL_HEADER = "x-mpnn-reject-detail"
# The queue the rejected message was consumed from.
REJECT_QUEUE_HEADER = "x-mpnn-reject-queue"

# Reject reason for a delivery whose handler raised without settling it.
HANDLER_ERROR_REASON = "handler-error"

# A consumer keeps every chunk of a message unacknowledged until the whole
# message is handled, and AMQP's prefetch count is 16 bits, so no consumer can
# receive a message of more chunks than this.
MAX_CHUNKS_PER_MESSAGE = 65535


class UnroutableError(TransportError):
    """A mandatory publish matched no queue, so the broker returned it."""


class MessageTooLargeError(InvalidInputError):
    """A message body needs more chunks than a consumer can hold (`MAX_CHUNKS_PER_MESSAGE`)."""


class QueueNotFoundError(TransportError):
    """The named queue does not exist on the broker."""


class QueueMismatchError(InvalidInputError):
    """A queue of that name exists with other properties (durable, exclusive, auto-delete)."""


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
    # Mandatory messages that match no queue raise UnroutableError. Only messages
    # that may have no consumer (progress events, heartbeats) turn this off.
    mandatory: bool = True


class Delivery(abc.ABC):
    """A received message; exactly one of ack, requeue or reject must be called.

    Calling a second one raises RuntimeError. If the consumer was cancelled or
    the connection dropped before the call, the broker has already put the
    message back in its queue, so the call only logs and returns.
    """

    body: bytes
    headers: Mapping[str, Any]
    routing_key: str
    redelivered: bool
    persistent: bool
    reply_to: str | None
    correlation_id: str | None
    # Full name of the queue the message was consumed from.
    queue: str

    @property
    @abc.abstractmethod
    def is_settled(self) -> bool:
        """Whether ack, requeue or reject has completed (or the delivery was returned by a cancel)."""

    @property
    def is_stale(self) -> bool:
        """Whether the broker has taken the message back unsettled (consumer cancelled, channel closed)."""
        return False

    @abc.abstractmethod
    async def ack(self) -> None: ...

    @abc.abstractmethod
    async def requeue(self) -> None: ...

    @abc.abstractmethod
    async def reject(self, reason: str, detail: str = "") -> None:
        """Move the message to the dead-letter queue with `reason` in its headers.

        The copy in the dead-letter queue keeps the body, routing key and
        headers, and adds `x-mpnn-reject-reason`, `x-mpnn-reject-detail` and
        `x-mpnn-reject-queue`. If this raises, the delivery is still unsettled.
        """


Handler = Callable[[Delivery], Awaitable[None]]


class Transport(abc.ABC):
    """A connection to the message bus under one namespace (exchange and queue name prefix).

    Use it as `async with transport:` or call `connect()` and `close()`.
    """

    namespace: str
    # The broker's maximum message body size; larger bodies travel in chunks of at most this size.
    max_message_bytes: int

    @property
    def max_body_bytes(self) -> int:
        """The largest body `publish` accepts: `MAX_CHUNKS_PER_MESSAGE` chunks of `max_message_bytes`.

        A consumer receives a body only as large as its prefetch allows:
        `prefetch` chunks of `max_message_bytes` at most.
        """
        return self.max_message_bytes * MAX_CHUNKS_PER_MESSAGE

    @property
    def data_exchange(self) -> str:
        return f"{self.namespace}.data"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.dead"

    def queue_name(self, local_name: str) -> str:
        """Return the full queue name for a name local to this namespace."""
        return f"{self.namespace}.{local_name}"

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    @abc.abstractmethod
    def is_open(self) -> bool:
        """Whether `connect()` succeeded and `close()` has not been called since."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect and declare the namespace's exchanges and dead-letter queue."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel every consumer (their unacknowledged deliveries go back to their queues) and disconnect."""

    @abc.abstractmethod
    async def declare_queue(
        self,
        local_name: str,
        routing_keys: Iterable[str],
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        expires_s: float | None = None,
    ) -> str:
        """Declare a queue bound to the data exchange by `routing_keys`; return its full name.

        Routing keys are topic patterns (`*` one word, `#` zero or more).
        `expires_s` deletes the queue after that long without consumers (RabbitMQ's
        `x-expires`); in-process queues live as long as their transport's broker.
        Declaring an existing queue adds bindings and never removes any; it
        raises `QueueMismatchError` if durable, exclusive or auto_delete differ.
        Rejected messages of every declared queue go to the dead-letter queue.
        """

    @abc.abstractmethod
    async def delete_queue(self, full_name: str) -> None:
        """Delete a queue and its messages; its consumers are cancelled first."""

    @abc.abstractmethod
    async def publish(self, message: Outgoing) -> None:
        """Publish to the data exchange and wait for the broker's confirm.

        Safe to call from many tasks at once; the confirms are then awaited concurrently.
        """

    async def publish_many(self, messages: Iterable[Outgoing]) -> None:
        """Publish several messages with their confirms awaited together.

        Returns when every publish has finished. If any failed, raises the
        first failure in iteration order; the other messages were still published.
        """
        results = await asyncio.gather(
            *(self.publish(message) for message in messages), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    @abc.abstractmethod
    async def consume(self, full_name: str, handler: Handler, *, prefetch: int) -> str:
        """Start delivering messages of a queue to `handler`; return a consumer tag.

        Raises `QueueNotFoundError` if the queue does not exist.
        """

    @abc.abstractmethod
    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; unacknowledged deliveries go back to their queue.

        A handler call in progress is cancelled, unless `cancel` is called from
        that handler itself.
        """

    @abc.abstractmethod
    async def queue_depth(self, full_name: str) -> int:
        """Return the number of ready (not yet delivered) messages in a queue.

        Raises `QueueNotFoundError` if the queue does not exist.
        """

    @abc.abstractmethod
    async def purge_namespace(self) -> None:
        """Delete every exchange and queue this transport declared (used by tests and `mpnn`).

        That is the queues declared through this object, the dead-letter queue
        and both exchanges. Queues that other processes declared in the same
        namespace are not known here and stay.
        """


async def call_handler(handler: Handler, delivery: Delivery, *, consumer_tag: str) -> None:
    """Run `handler` on one delivery; reject the delivery if the handler raises without settling it.

    A failing handler must not stop its consumer, and a delivery left unsettled
    would hold a prefetch slot forever, so the delivery goes to the dead-letter
    queue with reason `handler-error` and the exception in the detail header.
    """
    try:
        await handler(delivery)
    except Exception as exc:
        log.exception(
            "handler.failed consumer=%s queue=%s routing_key=%s correlation_id=%s",
            consumer_tag,
            delivery.queue,
            delivery.routing_key,
            delivery.correlation_id,
        )
        if delivery.is_settled:
            return
        try:
            await delivery.reject(HANDLER_ERROR_REASON, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception(
                "handler.reject_failed consumer=%s queue=%s routing_key=%s; the delivery stays unacknowledged",
                consumer_tag,
                delivery.queue,
                delivery.routing_key,
            )
