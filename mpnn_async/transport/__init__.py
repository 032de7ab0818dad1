"""Message transports: RabbitMQ (aio-pika) and in-process (asyncio), with one interface."""

from __future__ import annotations

from mpnn_async.errors import ConfigError
from mpnn_async.transport.base import (
    Delivery,
    Handler,
    MessageTooLargeError,
    Outgoing,
    QueueMismatchError,
    QueueNotFoundError,
    Transport,
    UnroutableError,
)
from mpnn_async.transport.memory import InProcessBroker, MemoryTransport
from mpnn_async.transport.rabbitmq import RabbitMQSettings, RabbitMQTransport
from mpnn_async.transport.urls import redact_url

__all__ = [
    "Delivery",
    "Handler",
    "InProcessBroker",
    "MemoryTransport",
    "MessageTooLargeError",
    "Outgoing",
    "QueueMismatchError",
    "QueueNotFoundError",
    "RabbitMQSettings",
    "RabbitMQTransport",
    "Transport",
    "UnroutableError",
    "create_transport",
    "open_transport",
    "redact_url",
]

MEMORY_URL = "memory://"


async def open_transport(
    url: str | None,
    *,
    namespace: str,
    max_message_bytes: int,
    rabbitmq_settings: RabbitMQSettings | None = None,
) -> Transport:
    """Return a connected transport for `url`; the caller closes it (`close()` or `async with`).

    `None`, `""` or `memory://` gives the in-process transport, shared by every
    in-process transport of the same event loop. `amqp://` and `amqps://`
    give the RabbitMQ transport; `rabbitmq_settings` sets its timeouts and
    retries. Raises ConfigError for another URL and TransportError when the
    broker cannot be reached.
    """
    transport = create_transport(
        url, namespace=namespace, max_message_bytes=max_message_bytes, rabbitmq_settings=rabbitmq_settings
    )
    await transport.connect()
    return transport


def create_transport(
    url: str | None,
    *,
    namespace: str,
    max_message_bytes: int,
    rabbitmq_settings: RabbitMQSettings | None = None,
) -> Transport:
    """Return the transport for `url` without connecting it; see `open_transport`."""
    if not url or url == MEMORY_URL:
        return MemoryTransport(namespace=namespace, max_message_bytes=max_message_bytes)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("amqp", "amqps"):
        return RabbitMQTransport(
            url=url, namespace=namespace, max_message_bytes=max_message_bytes, settings=rabbitmq_settings
        )
    raise ConfigError(
        "broker_url",
        f"unsupported URL {redact_url(url)!r}",
        fix="use amqp://user:password@host:5672/vhost, amqps://..., or memory:// for the in-process transport",
    )
