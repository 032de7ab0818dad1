"""The RabbitMQ transport, on aio-pika's robust connection.

Channels: one for declarations and deletions (`admin`), one with publisher
confirms for publishing, and one per consumer so that each consumer's
prefetch (channel QoS) is its own. aio-pika's robust objects reconnect after
the connection drops and restore the exchanges, queues, bindings and consumers
declared on them; `reconnect_interval_s` sets the pause between attempts.

A body over `max_message_bytes` would make RabbitMQ close the publishing
channel, so it is published as chunks (`chunking.ChunkPublisher`), and each
consumer reassembles them before its handler runs (`reassembly.ChunkAssembler`).

A channel error (for example a passive declare of a missing queue) closes
the channel it happens on. Operations that can fail that way run first on a
short-lived probe channel, so the long-lived channels never see such errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

from mpnn_async.errors import ConfigError, MpnnError, TransportError
from mpnn_async.transport.base import (
    Handler,
    Outgoing,
    QueueMismatchError,
    QueueNotFoundError,
    Transport,
    UnroutableError,
)
from mpnn_async.transport.chunking import ChunkPublisher
from mpnn_async.transport.rabbitmq_consumer import RabbitMQConsumer
from mpnn_async.transport.reassembly import ChunkAssembler
from mpnn_async.transport.urls import redact_text, redact_url
from mpnn_async.transport.validation import (
    broker_limit_warning,
    validate_local_name,
    validate_max_message_bytes,
    validate_namespace,
    validate_outgoing,
    validate_prefetch,
    validate_routing_patterns,
)

__all__ = ["AUTHENTICATION_ERRORS", "TRANSIENT_ERRORS", "RabbitMQSettings", "RabbitMQTransport"]

log = logging.getLogger(__name__)

# Errors that a later attempt may not see: the broker is down, restarting or
# unreachable. Connection retries catch exactly these. asyncio.TimeoutError
# is TimeoutError, an OSError.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    OSError,
)
# The broker refused the login; retrying with the same credentials cannot help.
AUTHENTICATION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ProbableAuthenticationError,
)
# Errors of any broker operation, translated to TransportError where caught.
_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    *TRANSIENT_ERRORS,
)

_Resource = TypeVar("_Resource")

# Pause before a publish retries on a channel that closed before its frame was
# sent, and between attempts to open a probe channel during a reconnection.
_CHANNEL_RETRY_DELAY_S = 0.05


def _failed_by_lost_connection() -> bool:
    """Return whether a CancelledError caught in this task came from aiormq, not from a cancel of the task.

    When aiormq gives up a connection that stopped sending frames (its
    heartbeat check), it fails every pending operation with CancelledError.
    Unless translated, that error would end the calling task as if it had
    been cancelled, for example a worker's heartbeat loop or consumer.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RabbitMQSettings:
    """Timeouts and retries of the RabbitMQ transport."""

    # Maximum time for one connection attempt (TCP connect and AMQP handshake).
    connect_timeout_s: float = 10.0
    # Attempts at connect() before it raises TransportError.
    connect_attempts: int = 5
    # Pause after the first failed attempt; it doubles after each further one.
    connect_backoff_s: float = 0.5
    connect_backoff_max_s: float = 8.0
    # Pause between reconnection attempts after an established connection
    # drops; aio-pika retries without limit until close().
    reconnect_interval_s: float = 1.0
    # Maximum time for a declaration, deletion or queue-depth query, including
    # a wait for the connection to come back.
    operation_timeout_s: float = 30.0
    # Maximum time from publish() to the broker's confirm, including a wait
    # for the connection to come back.
    publish_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "connect_attempts":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(field.name, f"must be an integer >= 1, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(field.name, f"must be a number of seconds > 0, got {value!r}")


class RabbitMQTransport(Transport):
    """The transport over a RabbitMQ broker (AMQP 0-9-1), with reconnection, confirms and manual acks."""

    def __init__(
        self,
        *,
        url: str,
        namespace: str,
        max_message_bytes: int,
        settings: RabbitMQSettings | None = None,
    ) -> None:
        validate_namespace(namespace)
        validate_max_message_bytes(max_message_bytes)
        self.namespace = namespace
        self.max_message_bytes = max_message_bytes
        self._chunk_publisher = ChunkPublisher(max_message_bytes=max_message_bytes)
        self.settings = settings or RabbitMQSettings()
        self._url = url
        self.redacted_url = redact_url(url)
        self._state: Literal["new", "open", "closing", "closed"] = "new"
        self._connection: AbstractRobustConnection | None = None
        self._admin: AbstractRobustChannel | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._data_exchange: AbstractExchange | None = None
        self._dead_letter_exchange: AbstractExchange | None = None
        self._consumers: dict[str, RabbitMQConsumer] = {}
        self._declared_queues: set[str] = set()
        self.reconnect_count = 0

    def __repr__(self) -> str:
        return (
            f"<RabbitMQTransport {self.redacted_url} namespace={self.namespace} {self._state} "
            f"consumers={len(self._consumers)} reconnects={self.reconnect_count}>"
        )

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    @property
    def connection(self) -> AbstractRobustConnection:
        """The underlying aio-pika robust connection (for diagnostics and tests)."""
        if self._connection is None:
            raise TransportError(f"{self!r} is not connected; call connect() first")
        return self._connection

    # -- connection ----------------------------------------------------------

    async def connect(self) -> None:
        if self._state == "open":
            return
        if self._state != "new":
            raise TransportError(f"{self!r} was closed; open a new transport")
        connection = await self._connect_with_retries()
        try:
            await self._open_channels(connection)
        except _BROKER_ERRORS as exc:
            await connection.close()
            raise TransportError(
                f"connected to {self.redacted_url} but could not declare the exchanges of namespace "
                f"{self.namespace!r}: {self._describe(exc)}"
            ) from exc
        self._connection = connection
        connection.close_callbacks.add(self._on_connection_closed)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._state = "open"
        log.info("transport.connected kind=rabbitmq url=%s namespace=%s", self.redacted_url, self.namespace)
        self._warn_if_over_broker_default(connection)

    async def _connect_with_retries(self) -> AbstractRobustConnection:
        settings = self.settings
        error: BaseException | None = None
        for attempt in range(1, settings.connect_attempts + 1):
            try:
                return await aio_pika.connect_robust(
                    self._url,
                    timeout=settings.connect_timeout_s,
                    reconnect_interval=settings.reconnect_interval_s,
                    client_properties={"connection_name": f"mpnn-async {self.namespace}"},
                )
            except AUTHENTICATION_ERRORS as exc:
                raise TransportError(
                    f"the broker at {self.redacted_url} rejected the login: {self._describe(exc)}; "
                    "check the user name and password in the broker URL"
                ) from exc
            except ValueError:
                raise ConfigError(
                    "broker_url", f"invalid broker URL {self.redacted_url}", fix="use amqp://user:password@host:5672/vhost"
                ) from None
            except TRANSIENT_ERRORS as exc:
                error = exc
            except aiormq.exceptions.AMQPError as exc:
                # For example Connection.Close instead of OpenOk: the virtual host does not exist
                # or the user may not use it. Retrying cannot help.
                raise TransportError(
                    f"the broker at {self.redacted_url} refused the connection: {self._describe(exc)}; "
                    "check that the virtual host in the URL exists and the user may access it"
                ) from exc
            if attempt < settings.connect_attempts:
                delay_s = min(settings.connect_backoff_s * 2 ** (attempt - 1), settings.connect_backoff_max_s)
                log.warning(
                    "transport.connect_failed url=%s attempt=%d/%d error=%s retry_in_s=%.1f",
                    self.redacted_url,
                    attempt,
                    settings.connect_attempts,
                    self._describe(error),
                    delay_s,
                )
                await asyncio.sleep(delay_s)
        raise TransportError(
            f"could not connect to the broker at {self.redacted_url} after {settings.connect_attempts} "
            f"attempts: {self._describe(error)}; start RabbitMQ or fix the URL"
        ) from error

    async def _open_channels(self, connection: AbstractRobustConnection) -> None:
        self._admin = await connection.channel(publisher_confirms=False)
        # on_return_raises turns a returned (unroutable) mandatory publish into PublishError.
        self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await self._admin.declare_exchange(self.data_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await self._admin.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_letter_queue = await self._admin.declare_queue(self.dead_letter_queue, durable=True)
        await dead_letter_queue.bind(self.dead_letter_exchange, routing_key="")
        self._data_exchange = await self._publisher.get_exchange(self.data_exchange, ensure=False)
        self._dead_letter_exchange = await self._publisher.get_exchange(
            self.dead_letter_exchange, ensure=False
        )

    def _warn_if_over_broker_default(self, connection: AbstractRobustConnection) -> None:
        underlay = connection.transport
        if underlay is None:
            return
        warning = broker_limit_warning(underlay.connection.server_properties, self.max_message_bytes)
        if warning is not None:
            log.warning("transport.max_message_bytes_over_broker_default url=%s %s", self.redacted_url, warning)

    def _on_connection_closed(self, _connection: object, error: BaseException | None = None) -> None:
        if self._state != "open":
            return
        log.warning(
            "transport.connection_lost url=%s error=%s; reconnecting every %.1f s",
            self.redacted_url,
            self._describe(error) if error is not None else "closed without an error",
            self.settings.reconnect_interval_s,
        )

    def _on_reconnected(self, _connection: object) -> None:
        self.reconnect_count += 1
        log.info(
            "transport.reconnected url=%s namespace=%s reconnects=%d",
            self.redacted_url,
            self.namespace,
            self.reconnect_count,
        )

    async def close(self) -> None:
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            self._state = "closed"
            return
        self._state = "closing"
        for tag in list(self._consumers):
            await self.cancel(tag)
        with contextlib.suppress(*_BROKER_ERRORS):
            await self.connection.close()
        self._state = "closed"
        log.info("transport.closed kind=rabbitmq url=%s namespace=%s", self.redacted_url, self.namespace)

    # -- queues --------------------------------------------------------------

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
        admin = self._require_open(self._admin)
        full_name = self.queue_name(local_name)
        validate_local_name(full_name, local_name)
        patterns = validate_routing_patterns(routing_keys)

        properties = {"durable": durable, "exclusive": exclusive, "auto_delete": auto_delete}
        # Messages that the broker itself dead-letters (a basic.reject without
        # requeue, a delivery limit) go to the dead-letter queue as well.
        arguments: dict[str, Any] = {"x-dead-letter-exchange": self.dead_letter_exchange}
        if expires_s is not None:
            arguments["x-expires"] = max(1, round(expires_s * 1000))

        async with self._probe(f"declare queue {full_name!r}") as probe:
            try:
                await probe.queue_declare(
                    full_name,
                    durable=durable,
                    exclusive=exclusive,
                    auto_delete=auto_delete,
                    arguments=arguments,
                )
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise QueueMismatchError(
                    f"queue {full_name!r} exists with other properties than {properties} and "
                    f"arguments {arguments} ({exc.args[0] if exc.args else exc}); declare it with the "
                    "same properties or delete it first"
                ) from exc
            try:
                for pattern in patterns:
                    await probe.queue_bind(full_name, self.data_exchange, routing_key=pattern)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise TransportError(
                    f"could not bind queue {full_name!r} to exchange {self.data_exchange!r}: "
                    f"{self._describe(exc)}; the exchange was deleted (purge_namespace) since connect()"
                ) from exc

        # Declared again on the robust channel, which restores it after a reconnection.
        async with self._broker_errors(f"declare queue {full_name!r}"):
            queue = await admin.declare_queue(
                full_name, durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=arguments
            )
            for pattern in patterns:
                await queue.bind(self.data_exchange, routing_key=pattern)
        self._declared_queues.add(full_name)
        log.debug("queue.declared name=%s routing_keys=%s", full_name, patterns)
        return full_name

    async def delete_queue(self, full_name: str) -> None:
        admin = self._require_open(self._admin)
        for tag, consumer in list(self._consumers.items()):
            if consumer.queue.name == full_name:
                await self.cancel(tag)
        async with self._broker_errors(f"delete queue {full_name!r}"):
            await admin.queue_delete(full_name)
        self._declared_queues.discard(full_name)

    async def queue_depth(self, full_name: str) -> int:
        self._require_open(self._admin)
        async with self._probe(f"query the depth of queue {full_name!r}") as probe:
            declare_ok = await probe.queue_declare(full_name, passive=True)
        return int(declare_ok.message_count or 0)

    async def purge_namespace(self) -> None:
        admin = self._require_open(self._admin)
        for tag in list(self._consumers):
            await self.cancel(tag)
        async with self._broker_errors(f"purge namespace {self.namespace!r}"):
            for name in sorted(self._declared_queues | {self.dead_letter_queue}):
                await admin.queue_delete(name)
            await admin.exchange_delete(self.data_exchange)
            await admin.exchange_delete(self.dead_letter_exchange)
        self._declared_queues.clear()
        log.info("transport.purged kind=rabbitmq url=%s namespace=%s", self.redacted_url, self.namespace)

    # -- publishing ----------------------------------------------------------

    async def publish(self, message: Outgoing) -> None:
        self._require_open(self._data_exchange)
        validate_outgoing(message, max_message_bytes=self.max_message_bytes)
        if len(message.body) > self.max_message_bytes:
            await self._chunk_publisher.publish(message, self._publish_one)
        else:
            await self._publish_one(message)

    async def _publish_one(self, message: Outgoing) -> None:
        exchange = self._require_open(self._data_exchange)
        amqp_message = aio_pika.Message(
            message.body,
            headers=dict(message.headers) if message.headers else None,
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if message.persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            reply_to=message.reply_to,
            correlation_id=message.correlation_id,
        )
        await self._publish_confirmed(
            exchange, amqp_message, message.routing_key, mandatory=message.mandatory
        )

    async def _publish_dead_letter(self, message: aio_pika.Message, routing_key: str) -> None:
        exchange = self._require_open(self._dead_letter_exchange)
        await self._publish_confirmed(exchange, message, routing_key)

    async def _publish_confirmed(
        self,
        exchange: AbstractExchange,
        message: aio_pika.Message,
        routing_key: str,
        *,
        mandatory: bool = True,
    ) -> None:
        """Publish (mandatory by default) and wait for the confirm, across a reconnection."""
        publisher = self._require_open(self._publisher)
        timeout_s = self.settings.publish_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    await publisher.ready()
                    try:
                        result = await exchange.publish(message, routing_key, mandatory=mandatory)
                        break
                    except aiormq.exceptions.ChannelInvalidStateError:
                        # Raised before the frame was sent: the channel closed
                        # after ready() returned. Wait until it is restored.
                        if self._state != "open":
                            raise
                        await asyncio.sleep(_CHANNEL_RETRY_DELAY_S)
        except aiormq.exceptions.PublishError as exc:
            raise self._unroutable(exchange, routing_key) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise TransportError(
                f"the broker rejected (nack) the message for routing key {routing_key!r} on exchange "
                f"{exchange.name!r}; it may be out of disk or memory"
            ) from exc
        except TimeoutError as exc:
            raise TransportError(
                f"publish to {exchange.name!r} with routing key {routing_key!r} was not confirmed within "
                f"{timeout_s} s (publish_timeout_s); the broker at {self.redacted_url} may be down"
            ) from exc
        except _BROKER_ERRORS as exc:
            raise TransportError(
                f"publish to {exchange.name!r} with routing key {routing_key!r} failed: "
                f"{self._describe(exc)}; the message may or may not have reached the broker"
            ) from exc
        except asyncio.CancelledError as exc:
            if not _failed_by_lost_connection():
                raise
            raise TransportError(
                f"publish to {exchange.name!r} with routing key {routing_key!r} failed: the connection to "
                f"{self.redacted_url} was given up; the message may or may not have reached the broker"
            ) from exc
        if isinstance(result, aiormq.abc.DeliveredMessage):
            # A returned message, should aio-pika hand it back instead of raising.
            raise self._unroutable(exchange, routing_key)

    def _unroutable(self, exchange: AbstractExchange, routing_key: str) -> UnroutableError:
        return UnroutableError(
            f"no queue is bound to routing key {routing_key!r} on exchange {exchange.name!r}; "
            "declare a queue with a matching pattern before publishing"
        )

    # -- consuming -----------------------------------------------------------

    async def consume(self, full_name: str, handler: Handler, *, prefetch: int) -> str:
        self._require_open(self._admin)
        validate_prefetch(prefetch)
        # Fails with QueueNotFoundError on the probe, before a channel is spent.
        await self.queue_depth(full_name)
        channel = await self._open_consumer_channel(prefetch)
        try:
            async with self._broker_errors(f"consume from queue {full_name!r}"):
                queue = await channel.declare_queue(full_name, passive=True)
                assembler = ChunkAssembler(handler, prefetch=prefetch, queue=full_name)
                consumer = RabbitMQConsumer(
                    channel=channel,
                    queue=queue,
                    handler=assembler,
                    prefetch=prefetch,
                    publish_dead_letter=self._publish_dead_letter,
                )
                tag = await queue.consume(consumer.on_message, no_ack=False)
        except BaseException:
            with contextlib.suppress(*_BROKER_ERRORS):
                await channel.close()
            raise
        assembler.consumer_tag = tag
        consumer.start(tag)
        self._consumers[tag] = consumer
        log.debug("consumer.started tag=%s queue=%s prefetch=%d", tag, full_name, prefetch)
        return tag

    async def _open_consumer_channel(self, prefetch: int) -> AbstractRobustChannel:
        async with self._broker_errors("open a consumer channel"):
            channel = await self.connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def cancel(self, consumer_tag: str) -> None:
        consumer = self._consumers.pop(consumer_tag, None)
        if consumer is None:
            return
        await consumer.stop(timeout_s=self.settings.operation_timeout_s)
        log.debug("consumer.cancelled tag=%s queue=%s", consumer_tag, consumer.queue.name)

    # -- helpers -------------------------------------------------------------

    def _require_open(self, resource: _Resource | None) -> _Resource:
        if self._state != "open" or resource is None:
            raise TransportError(
                f"{self!r} is not open; call connect() first, and do not use it after close()"
            )
        return resource

    @contextlib.asynccontextmanager
    async def _broker_errors(self, action: str) -> AsyncIterator[None]:
        """Translate aio-pika and aiormq errors into TransportError naming `action`, within the operation timeout."""
        timeout_s = self.settings.operation_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                yield
        except MpnnError:
            raise
        except TimeoutError as exc:
            raise TransportError(
                f"could not {action} within {timeout_s} s (operation_timeout_s); "
                f"the broker at {self.redacted_url} may be down"
            ) from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise TransportError(f"could not {action}: {self._describe(exc)}") from exc
        except aiormq.exceptions.ChannelLockedResource as exc:
            raise TransportError(
                f"could not {action}: the queue is exclusive to another connection ({self._describe(exc)})"
            ) from exc
        except _BROKER_ERRORS as exc:
            raise TransportError(f"could not {action}: {self._describe(exc)}") from exc
        except asyncio.CancelledError as exc:
            if not _failed_by_lost_connection():
                raise
            raise TransportError(f"could not {action}: the connection to {self.redacted_url} was given up") from exc

    @contextlib.asynccontextmanager
    async def _probe(self, action: str) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """Yield a short-lived raw channel for operations that may end in a channel error.

        A missing queue raises QueueNotFoundError; other broker errors raise TransportError.
        """
        async with self._broker_errors(action):
            probe = await self._open_probe_channel()
            try:
                yield probe
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise QueueNotFoundError(f"could not {action}: {self._describe(exc)}") from exc
            finally:
                if not probe.is_closed:
                    with contextlib.suppress(*_BROKER_ERRORS):
                        await probe.close()

    async def _open_probe_channel(self) -> aiormq.abc.AbstractChannel:
        """Open a raw channel on the live connection, waiting while aio-pika reconnects.

        Until aio-pika has restored the admin channel after a reconnection, its
        underlay channel belongs to the closed connection, where aiormq raises
        RuntimeError instead of opening a channel. The caller bounds the wait.
        """
        admin = self._require_open(self._admin)
        while True:
            await admin.ready()
            with contextlib.suppress(aiormq.exceptions.ChannelInvalidStateError):
                connection = (await admin.get_underlay_channel()).connection
                if not connection.is_closed:
                    try:
                        return await connection.channel(publisher_confirms=False)
                    except RuntimeError:
                        if not connection.is_closed:
                            raise
            self._require_open(self._admin)
            await asyncio.sleep(_CHANNEL_RETRY_DELAY_S)

    def _describe(self, error: BaseException | None) -> str:
        """Return `error` as `Type: message` with the broker password removed."""
        if error is None:
            return "unknown error"
        return redact_text(f"{type(error).__name__}: {error}", self._url)
