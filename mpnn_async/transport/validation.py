"""Checks on transport settings and messages that both implementations run before any I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from mpnn_async.errors import ConfigError, InvalidInputError
from mpnn_async.transport.base import MAX_CHUNKS_PER_MESSAGE, MessageTooLargeError, Outgoing
from mpnn_async.transport.chunking import chunk_count

__all__ = [
    "MAX_NAME_BYTES",
    "RABBITMQ_4_DEFAULT_MAX_MESSAGE_BYTES",
    "broker_limit_warning",
    "validate_local_name",
    "validate_max_message_bytes",
    "validate_namespace",
    "validate_outgoing",
    "validate_prefetch",
    "validate_routing_patterns",
]

# AMQP 0-9-1 sends exchange names, queue names and routing keys as short
# strings: at most 255 bytes of UTF-8.
MAX_NAME_BYTES = 255

# RabbitMQ accepts these characters in exchange names; the namespace prefixes
# both exchanges and every queue. Names starting with `amq.` are reserved.
_NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.:\-]*")
# Room left after the namespace for `.dead`, `.data` and local queue names.
_MAX_NAMESPACE_CHARS = 128


def validate_namespace(namespace: str) -> None:
    """Raise ConfigError unless `namespace` can prefix exchange and queue names."""
    if not isinstance(namespace, str) or not _NAMESPACE_PATTERN.fullmatch(namespace):
        raise ConfigError(
            "namespace",
            f"invalid value {namespace!r}",
            fix="use letters, digits, '-', '_', '.' and ':', starting with a letter, digit, '-' or '_'",
        )
    if len(namespace) > _MAX_NAMESPACE_CHARS:
        raise ConfigError(
            "namespace",
            f"{len(namespace)} characters is over the maximum of {_MAX_NAMESPACE_CHARS}",
            fix="use a shorter namespace",
        )
    if namespace.startswith("amq."):
        raise ConfigError(
            "namespace",
            f"{namespace!r} starts with 'amq.', which RabbitMQ reserves",
            fix="pick another prefix",
        )


def validate_max_message_bytes(max_message_bytes: int) -> None:
    """Raise ConfigError unless `max_message_bytes` is a positive integer."""
    if (
        isinstance(max_message_bytes, bool)
        or not isinstance(max_message_bytes, int)
        or max_message_bytes <= 0
    ):
        raise ConfigError(
            "max_message_bytes",
            f"must be a positive integer, got {max_message_bytes!r}",
            fix="set it to the broker's max_message_size (default 134217728 on RabbitMQ 3.x, 16777216 from 4.0)",
        )


# RabbitMQ's default max_message_size from 4.0 on; 3.x defaults to 128 MiB.
RABBITMQ_4_DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def broker_limit_warning(server_properties: Mapping[str, Any], max_message_bytes: int) -> str | None:
    """Return a warning if `max_message_bytes` is over the default max_message_size of this RabbitMQ version.

    A broker with a raised max_message_size is fine, but the limit cannot be
    read over AMQP, so this only warns. Returns None for other brokers and
    for versions it cannot parse.
    """
    if server_properties.get("product") != "RabbitMQ":
        return None
    version = str(server_properties.get("version", ""))
    major = version.partition(".")[0]
    if not major.isdigit() or int(major) < 4 or max_message_bytes <= RABBITMQ_4_DEFAULT_MAX_MESSAGE_BYTES:
        return None
    return (
        f"max_message_bytes is {max_message_bytes}, but RabbitMQ {version} rejects bodies over its "
        f"max_message_size, {RABBITMQ_4_DEFAULT_MAX_MESSAGE_BYTES} by default, by closing the channel; set "
        f"max_message_bytes (MPNN_MAX_MESSAGE_BYTES) to the broker's max_message_size"
    )


def validate_local_name(full_name: str, local_name: str) -> None:
    """Raise InvalidInputError unless a queue's local name is non-empty and its full name fits AMQP."""
    if not isinstance(local_name, str) or not local_name:
        raise InvalidInputError(f"queue name must be a non-empty string, got {local_name!r}")
    if len(full_name.encode()) > MAX_NAME_BYTES:
        raise InvalidInputError(
            f"queue name {full_name!r} is {len(full_name.encode())} bytes, over the AMQP maximum of "
            f"{MAX_NAME_BYTES}; use a shorter local name"
        )


def validate_prefetch(prefetch: int) -> None:
    """Raise InvalidInputError unless `prefetch` is a positive integer that fits AMQP's 16 bits."""
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= 65535:
        raise InvalidInputError(
            f"prefetch must be an integer from 1 to 65535, got {prefetch!r}; "
            "0 (unlimited) is not allowed because it removes the bound on unacknowledged deliveries"
        )


def validate_outgoing(message: Outgoing, *, max_message_bytes: int) -> None:
    """Raise InvalidInputError (MessageTooLargeError for size) unless `message` can be published.

    Only the body counts toward `max_message_bytes`, as in RabbitMQ's
    `max_message_size`; headers are bounded by the AMQP frame size instead. A
    larger body is published in chunks, up to `MAX_CHUNKS_PER_MESSAGE` of them.
    """
    if not isinstance(message.body, bytes):
        raise InvalidInputError(
            f"message body for routing key {message.routing_key!r} must be bytes, "
            f"got {type(message.body).__name__}; convert it with bytes(...)"
        )
    size_bytes = len(message.body)
    if size_bytes > max_message_bytes and chunk_count(size_bytes, max_message_bytes) > MAX_CHUNKS_PER_MESSAGE:
        raise MessageTooLargeError(
            f"message body for routing key {message.routing_key!r} is {size_bytes} bytes, over the "
            f"maximum of {MAX_CHUNKS_PER_MESSAGE} chunks of {max_message_bytes} bytes (max_message_bytes); "
            "send it in smaller blocks, or raise the broker's max_message_size and max_message_bytes together"
        )
    if len(message.routing_key.encode()) > MAX_NAME_BYTES:
        raise InvalidInputError(
            f"routing key {message.routing_key[:40]!r}... is over the AMQP maximum of {MAX_NAME_BYTES} bytes"
        )


def validate_routing_patterns(routing_keys: Iterable[str]) -> list[str]:
    """Return the binding patterns as a list; raise InvalidInputError unless each is a short enough string."""
    if isinstance(routing_keys, str):
        raise InvalidInputError(
            f"routing_keys must be a list of patterns, got the string {routing_keys!r}; wrap it in a list"
        )
    patterns = list(routing_keys)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise InvalidInputError(f"routing key pattern must be a string, got {pattern!r}")
        if len(pattern.encode()) > MAX_NAME_BYTES:
            raise InvalidInputError(
                f"routing key pattern {pattern[:40]!r}... is over the AMQP maximum of {MAX_NAME_BYTES} bytes"
            )
    return patterns
