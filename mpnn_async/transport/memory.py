"""The in-process transport: RabbitMQ's routing and acknowledgement semantics on asyncio, in one process.

It is the embedded default for one-process runs and the fast test double of
the RabbitMQ transport, so it keeps the same contract (see `base`) and stays
lean: bodies and headers are passed by reference, never encoded. Only a body
over `max_message_bytes` is copied, into chunks, as the RabbitMQ transport
does, so that tests on this transport exercise the same chunking.

Every `MemoryTransport` opened in one event loop shares one `InProcessBroker`
unless given its own, so transports of a scheduler and its workers in one
process see each other's queues, as they would on one RabbitMQ broker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import types
from collections.abc import Iterable
from typing import Literal

from mpnn_async.errors import MpnnError, TransportError
from mpnn_async.transport.base import (
    REJECT_DETAIL_HEADER,
    REJECT_QUEUE_HEADER,
    REJECT_REASON_HEADER,
    Delivery,
    Handler,
    Outgoing,
    Transport,
    UnroutableError,
    call_handler,
)
from mpnn_async.transport.chunking import ChunkPublisher
from mpnn_async.transport.memory_broker import (
    InProcessBroker,
    MemoryQueue,
    StoredMessage,
    check_exclusive_owner,
)
from mpnn_async.transport.reassembly import ChunkAssembler
from mpnn_async.transport.validation import (
    validate_local_name,
    validate_max_message_bytes,
    validate_namespace,
    validate_outgoing,
    validate_prefetch,
    validate_routing_patterns,
)

__all__ = ["InProcessBroker", "MemoryDelivery", "MemoryTransport"]

log = logging.getLogger(__name__)


class MemoryDelivery(Delivery):
    """One message handed to a consumer of the in-process transport."""

    __slots__ = (
        "_consumer",
        "_message",
        "_state",
        "body",
        "correlation_id",
        "headers",
        "persistent",
        "queue",
        "redelivered",
        "reply_to",
        "routing_key",
    )

    def __init__(self, message: StoredMessage, consumer: _Consumer) -> None:
        self.body = message.body
        self.headers = message.headers
        self.routing_key = message.routing_key
        self.redelivered = message.redelivered
        self.persistent = message.persistent
        self.reply_to = message.reply_to
        self.correlation_id = message.correlation_id
        self.queue = consumer.queue.name
        self._message = message
        self._consumer = consumer
        # "pending", "settled", or "returned" (put back in the queue by a cancel)
        self._state = "pending"

    def __repr__(self) -> str:
        return f"<MemoryDelivery queue={self.queue} routing_key={self.routing_key} {self._state}>"

    @property
    def is_settled(self) -> bool:
        return self._state != "pending"

    @property
    def is_stale(self) -> bool:
        return self._state == "returned"

    async def ack(self) -> None:
        if self._begin_settle("ack"):
            self._consumer.forget(self)

    async def requeue(self) -> None:
        if self._begin_settle("requeue"):
            self._consumer.forget(self)
            self._consumer.queue.return_to_head(self._message)

    async def reject(self, reason: str, detail: str = "") -> None:
        if not self._may_settle("reject"):
            return

        headers = dict(self.headers)
        headers[REJECT_REASON_HEADER] = reason
        headers[REJECT_DETAIL_HEADER] = detail
        headers[REJECT_QUEUE_HEADER] = self.queue
        dead = StoredMessage(
            self.routing_key,
            self.body,
            types.MappingProxyType(headers),
            self.persistent,
            self.reply_to,
            self.correlation_id,
        )

        transport = self._consumer.transport
        targets = transport.broker.route(transport.dead_letter_exchange, self.routing_key)
        if not targets:
            raise UnroutableError(
                f"no queue is bound to the dead-letter exchange {transport.dead_letter_exchange!r}; "
                "connect() declares the dead-letter queue, so it was deleted since"
            )
        for queue in targets:
            queue.enqueue(dead)

        self._state = "settled"
        self._consumer.forget(self)
        # The caller logs the rejection with its own ids; this line is for debugging the transport.
        log.debug(
            "delivery.rejected queue=%s routing_key=%s correlation_id=%s reason=%s detail=%s",
            self.queue,
            self.routing_key,
            self.correlation_id,
            reason,
            detail,
        )

    def mark_returned(self) -> None:
        self._state = "returned"

    def _begin_settle(self, action: str) -> bool:
        if not self._may_settle(action):
            return False
        self._state = "settled"
        return True

    def _may_settle(self, action: str) -> bool:
        """Return whether `action` should go ahead; raise if the delivery was settled already."""
        if self._state == "settled":
            raise RuntimeError(f"{action} on a delivery that was already settled: {self!r}")
        if self._state == "returned":
            log.info(
                "delivery.%s ignored queue=%s routing_key=%s: its consumer was cancelled and the "
                "message went back to the queue",
                action,
                self.queue,
                self.routing_key,
            )
            return False
        return True


class _Consumer:
    """Hands the messages of one queue to one handler, one call at a time, up to `prefetch` unacknowledged."""

    def __init__(
        self, *, tag: str, queue: MemoryQueue, handler: Handler, prefetch: int, transport: MemoryTransport
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.handler = handler
        self.prefetch = prefetch
        self.transport = transport
        # Insertion order is delivery order, which `stop` relies on.
        self.unacked: dict[int, MemoryDelivery] = {}
        self.active = True
        self._wake_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "active" if self.active else "stopped"
        return f"<_Consumer {self.tag} queue={self.queue.name} unacked={len(self.unacked)}/{self.prefetch} {state}>"

    def start(self) -> None:
        self.queue.consumers.append(self)
        self.task = asyncio.create_task(self._run(), name=f"mpnn-consumer-{self.tag}")
        self.wake()

    def wake(self) -> None:
        self._wake_event.set()

    def forget(self, delivery: MemoryDelivery) -> None:
        self.unacked.pop(id(delivery), None)
        self.wake()

    def stop(self) -> None:
        """Stop delivering and put every unacknowledged message back at the head of the queue, in order."""
        if not self.active:
            return
        self.active = False
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        for delivery in reversed(list(self.unacked.values())):
            delivery.mark_returned()
            self.queue.return_to_head(delivery._message)
        self.unacked.clear()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    async def _run(self) -> None:
        while self.active:
            while not (self.queue.ready and len(self.unacked) < self.prefetch):
                self._wake_event.clear()
                await self._wake_event.wait()
            delivery = MemoryDelivery(self.queue.ready.popleft(), self)
            self.unacked[id(delivery)] = delivery
            await call_handler(self.handler, delivery, consumer_tag=self.tag)
            # Yield once per delivery, so that a handler that never suspends
            # cannot starve the other tasks of the event loop.
            await asyncio.sleep(0)


class MemoryTransport(Transport):
    """The transport for one-process runs and fast tests, on an `InProcessBroker`."""

    _tags = itertools.count(1)

    def __init__(
        self, *, namespace: str, max_message_bytes: int, broker: InProcessBroker | None = None
    ) -> None:
        validate_namespace(namespace)
        validate_max_message_bytes(max_message_bytes)
        self.namespace = namespace
        self.max_message_bytes = max_message_bytes
        self._chunk_publisher = ChunkPublisher(max_message_bytes=max_message_bytes)
        self._broker = broker
        self._state: Literal["new", "open", "closed"] = "new"
        self._consumers: dict[str, _Consumer] = {}
        self._declared_queues: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"<MemoryTransport namespace={self.namespace} {self._state} "
            f"queues={len(self._declared_queues)} consumers={len(self._consumers)}>"
        )

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    @property
    def broker(self) -> InProcessBroker:
        if self._broker is None:
            raise TransportError("the in-process transport is not connected; call connect() first")
        return self._broker

    async def connect(self) -> None:
        if self._state == "open":
            return
        if self._state == "closed":
            raise TransportError(f"{self!r} was closed; open a new transport")
        if self._broker is None:
            self._broker = InProcessBroker.for_running_loop()
        self._broker.declare_exchange(self.data_exchange, "topic")
        self._broker.declare_exchange(self.dead_letter_exchange, "fanout")
        self._broker.declare_queue(
            self.dead_letter_queue, durable=True, exclusive=False, auto_delete=False, owner=self
        )
        self._broker.bind(self.dead_letter_exchange, self.dead_letter_queue, "")
        self._state = "open"
        log.info("transport.connected kind=memory namespace=%s", self.namespace)

    async def close(self) -> None:
        if self._state != "open":
            self._state = "closed"
            return
        for tag in list(self._consumers):
            await self.cancel(tag)
        for name in list(self._declared_queues):
            queue = self.broker.find_queue(name)
            if queue is not None and queue.exclusive and queue.owner is self:
                self.broker.delete_queue(name)
                self._declared_queues.discard(name)
        self._state = "closed"
        log.info("transport.closed kind=memory namespace=%s", self.namespace)

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
        self._check_open()
        full_name = self.queue_name(local_name)
        validate_local_name(full_name, local_name)
        patterns = validate_routing_patterns(routing_keys)
        broker = self.broker
        broker.declare_queue(
            full_name, durable=durable, exclusive=exclusive, auto_delete=auto_delete, owner=self
        )
        self._declared_queues.add(full_name)
        for pattern in patterns:
            broker.bind(self.data_exchange, full_name, pattern)
        log.debug("queue.declared name=%s routing_keys=%s", full_name, patterns)
        return full_name

    async def delete_queue(self, full_name: str) -> None:
        self._check_open()
        for tag, consumer in list(self._consumers.items()):
            if consumer.queue.name == full_name:
                await self.cancel(tag)
        self.broker.delete_queue(full_name)
        self._declared_queues.discard(full_name)

    async def publish(self, message: Outgoing) -> None:
        self._publish_now(message)

    async def publish_many(self, messages: Iterable[Outgoing]) -> None:
        first_error: MpnnError | None = None
        for message in messages:
            try:
                self._publish_now(message)
            except MpnnError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def _publish_now(self, message: Outgoing) -> None:
        self._check_open()
        validate_outgoing(message, max_message_bytes=self.max_message_bytes)
        targets = self.broker.route(self.data_exchange, message.routing_key)
        if not targets and not message.mandatory:
            return
        if not targets:
            raise UnroutableError(
                f"no queue is bound to routing key {message.routing_key!r} on exchange "
                f"{self.data_exchange!r}; declare a queue with a matching pattern before publishing"
            )
        if len(message.body) > self.max_message_bytes:
            # Enqueued without a pause in between, so chunks of two messages never interleave.
            for chunk in self._chunk_publisher.split(message):
                _enqueue(targets, chunk)
        else:
            _enqueue(targets, message)

    async def consume(self, full_name: str, handler: Handler, *, prefetch: int) -> str:
        self._check_open()
        validate_prefetch(prefetch)
        queue = self.broker.get_queue(full_name)
        check_exclusive_owner(queue, self)
        tag = f"mpnn-memory-{next(self._tags)}"
        assembler = ChunkAssembler(handler, prefetch=prefetch, queue=full_name)
        assembler.consumer_tag = tag
        consumer = _Consumer(tag=tag, queue=queue, handler=assembler, prefetch=prefetch, transport=self)
        self._consumers[tag] = consumer
        consumer.start()
        log.debug("consumer.started tag=%s queue=%s prefetch=%d", tag, full_name, prefetch)
        return tag

    async def cancel(self, consumer_tag: str) -> None:
        consumer = self._consumers.pop(consumer_tag, None)
        if consumer is None:
            return
        consumer.stop()
        task = consumer.task
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)
        queue = consumer.queue
        if queue.auto_delete and not queue.consumers:
            self.broker.delete_queue(queue.name)
            self._declared_queues.discard(queue.name)
        log.debug("consumer.cancelled tag=%s queue=%s", consumer_tag, queue.name)

    async def queue_depth(self, full_name: str) -> int:
        self._check_open()
        return len(self.broker.get_queue(full_name).ready)

    async def purge_namespace(self) -> None:
        self._check_open()
        for tag in list(self._consumers):
            await self.cancel(tag)
        broker = self.broker
        for name in self._declared_queues | {self.dead_letter_queue}:
            broker.delete_queue(name)
        self._declared_queues.clear()
        broker.delete_exchange(self.data_exchange)
        broker.delete_exchange(self.dead_letter_exchange)
        log.info("transport.purged kind=memory namespace=%s", self.namespace)

    def _check_open(self) -> None:
        if self._state != "open":
            raise TransportError(
                f"{self!r} is not open; call connect() first, and do not use it after close()"
            )


def _enqueue(targets: list[MemoryQueue], message: Outgoing) -> None:
    headers = types.MappingProxyType(dict(message.headers))
    for queue in targets:
        # One StoredMessage per queue, because `redelivered` is per queue.
        queue.enqueue(
            StoredMessage(
                message.routing_key,
                message.body,
                headers,
                message.persistent,
                message.reply_to,
                message.correlation_id,
            )
        )
