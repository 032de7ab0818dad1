"""Topic matching, URL redaction, the transport factory and setting checks, without a broker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpnn_async.errors import ConfigError, InvalidInputError
from mpnn_async.transport import (
    MemoryTransport,
    RabbitMQSettings,
    RabbitMQTransport,
    create_transport,
    open_transport,
)
from mpnn_async.transport.topic import topic_matches
from mpnn_async.transport.urls import redact_text, redact_url


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.*", "a", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#", "", True),
        ("*", "", False),
        ("#.#", "a", True),
        ("#.a.#", "b.a.c", True),
        ("#.a.#", "b.c", False),
        ("*.#.*", "a", False),
        ("*.#.*", "a.b", True),
        ("a.*.b", "a..b", True),
        ("", "", True),
        ("", "a", False),
    ],
)
def test_topic_matches_table(pattern, key, expected):
    assert topic_matches(pattern, key) is expected


def reference_matches(pattern: list[str], key: list[str]) -> bool:
    """Match by plain recursion on the AMQP rule, as an independent check."""
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(reference_matches(rest, key[skip:]) for skip in range(len(key) + 1))
    if not key:
        return False
    return (head == "*" or head == key[0]) and reference_matches(rest, key[1:])


words = st.lists(st.sampled_from(["a", "b", ""]), max_size=5)


@given(pattern=st.lists(st.sampled_from(["a", "b", "*", "#", ""]), max_size=5), key=words)
def test_topic_matches_reference(pattern, key):
    pattern_text = ".".join(pattern)
    key_text = ".".join(key)

    expected = reference_matches(
        pattern_text.split(".") if pattern_text else [], key_text.split(".") if key_text else []
    )

    assert topic_matches(pattern_text, key_text) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqps://user:p%40ss@broker/vhost?heartbeat=10", "amqps://user:***@broker/vhost?heartbeat=10"),
        ("amqp://user:pa@ss/word@host/", "amqp://user:***@host/"),
        ("amqp://user:p@host/v@x", "amqp://user:***@x"),
        ("amqp://user@host/", "amqp://user@host/"),
        ("amqp://host:5672/", "amqp://host:5672/"),
        ("memory://", "memory://"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_text_hides_encoded_and_decoded_password():
    url = "amqp://user:p%40ss@host/"

    text = redact_text("login p%40ss failed, tried p@ss", url)

    assert text == "login *** failed, tried ***"


async def test_open_transport_memory_default(namespace):
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1024)
    try:
        assert isinstance(transport, MemoryTransport)
        assert transport.is_open
        assert transport.max_message_bytes == 1024
    finally:
        await transport.close()


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1/", "amqps://u:p@host:5671/"])
def test_create_transport_amqp(url, namespace):
    transport = create_transport(url, namespace=namespace, max_message_bytes=1024)

    assert isinstance(transport, RabbitMQTransport)
    assert not transport.is_open


def test_create_transport_unknown_scheme_redacted(namespace):
    with pytest.raises(ConfigError, match="broker_url") as raised:
        create_transport("redis://user:topsecret@host/", namespace=namespace, max_message_bytes=1024)

    assert "topsecret" not in str(raised.value)
    assert "user:***@host" in str(raised.value)


@pytest.mark.parametrize("namespace", ["", "has space", "amq.reserved", "x" * 200, "a*b", ".leading"])
def test_invalid_namespace_raises(namespace):
    with pytest.raises(ConfigError, match="namespace"):
        MemoryTransport(namespace=namespace, max_message_bytes=1024)


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "1024"])
def test_invalid_max_message_bytes_raises(size, namespace):
    with pytest.raises(ConfigError, match="max_message_bytes"):
        MemoryTransport(namespace=namespace, max_message_bytes=size)


@pytest.mark.parametrize(
    "override",
    [
        {"connect_attempts": 0},
        {"connect_timeout_s": 0},
        {"publish_timeout_s": -1.0},
        {"connect_attempts": 1.5},
    ],
)
def test_invalid_rabbitmq_settings_raise(override):
    with pytest.raises(ConfigError, match=next(iter(override))):
        RabbitMQSettings(**override)


async def test_routing_keys_as_string_raises(namespace):
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1024)
    try:
        with pytest.raises(InvalidInputError, match="wrap it in a list"):
            await transport.declare_queue("q", "job.part.p0")
    finally:
        await transport.close()


def test_body_must_be_bytes(namespace):
    from mpnn_async.transport import Outgoing
    from mpnn_async.transport.validation import validate_outgoing

    with pytest.raises(InvalidInputError, match="must be bytes, got bytearray"):
        validate_outgoing(Outgoing("k", bytearray(b"x")), max_message_bytes=1024)
