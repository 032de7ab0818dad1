"""Consumers and deliveries of the RabbitMQ transport.

aio-pika runs each delivery's callback as its own task, so callbacks of one
consumer overlap. The runtime needs a queue's messages processed one at a
time in arrival order, so the callback only appends to an asyncio queue and
one task per consumer awaits the handler on each delivery in turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue

from mpnn_async.transport.base import (
    REJECT_DETAIL_HEADER,
    REJECT_QUEUE_HEADER,
    REJECT_REASON_HEADER,
    Delivery,
    Handler,
    call_handler,
)

__all__ = ["SETTLE_ERRORS", "DeadLetterPublisher", "RabbitMQConsumer", "RabbitMQDelivery"]

log = logging.getLogger(__name__)

# Errors of an ack or reject whose channel has closed or is closing. The
# broker puts the message back in its queue when the channel closes, so the
# settle call only logs them.
SETTLE_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
)

# Publishes a dead-letter copy to the dead-letter exchange under a routing key
# and waits for its confirm.
DeadLetterPublisher = Callable[[aio_pika.Message, str], Awaitable[None]]


class RabbitMQDelivery(Delivery):
    """One message received from RabbitMQ, acknowledged manually."""

    __slots__ = (
        "_message",
        "_publish_dead_letter",
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

    def __init__(
        self, message: AbstractIncomingMessage, *, queue: str, publish_dead_letter: DeadLetterPublisher
    ) -> None:
        self.body = message.body
        self.headers = message.headers
        self.routing_key = message.routing_key or ""
        self.redelivered = bool(message.redelivered)
        self.persistent = message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        self.reply_to = message.reply_to
        self.correlation_id = message.correlation_id
        self.queue = queue
        self._message = message
        self._publish_dead_letter = publish_dead_letter
        # "pending", "settled", or "returned" (its channel closed first)
        self._state = "pending"

    def __repr__(self) -> str:
        return f"<RabbitMQDelivery queue={self.queue} routing_key={self.routing_key} {self._state}>"

    @property
    def is_settled(self) -> bool:
        return self._state != "pending"

    @property
    def is_stale(self) -> bool:
        """Whether the channel this message came on has closed, so the broker has requeued it."""
        return message_is_stale(self._message)

    async def ack(self) -> None:
        if self._may_settle("ack"):
            self._state = "settled"
            await self._send_settle("ack", self._message.ack())

    async def requeue(self) -> None:
        if self._may_settle("requeue"):
            self._state = "settled"
            await self._send_settle("requeue", self._message.reject(requeue=True))

    async def reject(self, reason: str, detail: str = "") -> None:
        if not self._may_settle("reject"):
            return
        message = self._message
        headers = dict(message.headers)
        headers[REJECT_REASON_HEADER] = reason
        headers[REJECT_DETAIL_HEADER] = detail
        headers[REJECT_QUEUE_HEADER] = self.queue
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            delivery_mode=message.delivery_mode,
            reply_to=message.reply_to,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
        )
        # The copy is confirmed before the original is acknowledged, so a
        # crash in between leaves a duplicate, never a lost message.
        await self._publish_dead_letter(copy, self.routing_key)
        self._state = "settled"
        await self._send_settle("reject", message.ack())
        # The caller logs the rejection with its own ids; this line is for debugging the transport.
        log.debug(
            "delivery.rejected queue=%s routing_key=%s correlation_id=%s reason=%s detail=%s",
            self.queue,
            self.routing_key,
            self.correlation_id,
            reason,
            detail,
        )

    def _may_settle(self, action: str) -> bool:
        """Return whether `action` should go ahead; raise if the delivery was settled already."""
        if self._state == "settled":
            raise RuntimeError(f"{action} on a delivery that was already settled: {self!r}")
        if self._state == "pending" and self.is_stale:
            self._state = "returned"
        if self._state == "returned":
            log.info(
                "delivery.%s ignored queue=%s routing_key=%s: its channel closed and the broker "
                "put the message back in the queue",
                action,
                self.queue,
                self.routing_key,
            )
            return False
        return True

    async def _send_settle(self, action: str, settle: Awaitable[None]) -> None:
        try:
            await settle
        except SETTLE_ERRORS as exc:
            self._state = "returned"
            log.warning(
                "delivery.%s failed queue=%s routing_key=%s error=%s: the broker will deliver the "
                "message again",
                action,
                self.queue,
                self.routing_key,
                type(exc).__name__,
            )


def message_is_stale(message: AbstractIncomingMessage) -> bool:
    """Return whether the channel `message` arrived on has closed (aio-pika raises on access then)."""
    try:
        _ = message.channel
    except aiormq.exceptions.ChannelInvalidStateError:
        return True
    return False


class RabbitMQConsumer:
    """One consumer on its own channel, so that its prefetch (channel QoS) is its own."""

    def __init__(
        self,
        *,
        channel: AbstractRobustChannel,
        queue: AbstractRobustQueue,
        handler: Handler,
        prefetch: int,
        publish_dead_letter: DeadLetterPublisher,
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.handler = handler
        self.prefetch = prefetch
        self.tag = ""
        self._publish_dead_letter = publish_dead_letter
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def __repr__(self) -> str:
        state = "running" if self._task is not None and not self._task.done() else "stopped"
        return (
            f"<RabbitMQConsumer {self.tag} queue={self.queue.name} prefetch={self.prefetch} "
            f"buffered={self._inbox.qsize()} {state}>"
        )

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """Receive a delivery from aio-pika (its callback); the consumer task handles it in order."""
        self._inbox.put_nowait(message)

    def start(self, tag: str) -> None:
        self.tag = tag
        self._task = asyncio.create_task(self._run(), name=f"mpnn-consumer-{tag}")

    async def stop(self, *, timeout_s: float) -> None:
        """Stop the handler loop, cancel the consumer and close its channel, so the broker requeues unacked messages.

        During a broker outage the cancel cannot reach the broker; after
        `timeout_s` the consumer is left to the broker, which drops it with
        the connection.
        """
        self._stopping = True
        task = self._task
        # Called from this consumer's own handler, the loop ends when the handler returns.
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            async with asyncio.timeout(timeout_s):
                await self._cancel_and_close()
        except TimeoutError:
            log.warning(
                "consumer.cancel_timed_out tag=%s queue=%s timeout_s=%s", self.tag, self.queue.name, timeout_s
            )

    async def _cancel_and_close(self) -> None:
        # Closing the channel is what returns unacked messages, so it runs even if the cancel fails.
        try:
            if self.tag:
                await self.queue.cancel(self.tag)
        except SETTLE_ERRORS as exc:
            log.debug("consumer.cancel_failed tag=%s error=%r", self.tag, exc)
        try:
            await self.channel.close()
        except SETTLE_ERRORS as exc:
            log.warning(
                "consumer.channel_close_failed tag=%s queue=%s error=%r", self.tag, self.queue.name, exc
            )

    async def _run(self) -> None:
        while not self._stopping:
            message = await self._inbox.get()
            if message_is_stale(message):
                # Buffered before a reconnect: the broker has requeued it and
                # delivers it again on the restored channel.
                log.debug("delivery.dropped_stale tag=%s routing_key=%s", self.tag, message.routing_key)
                continue
            delivery = RabbitMQDelivery(
                message, queue=self.queue.name, publish_dead_letter=self._publish_dead_letter
            )
            await call_handler(self.handler, delivery, consumer_tag=self.tag)
