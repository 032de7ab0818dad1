"""Fixtures shared by every test area: the broker URL, a unique namespace, and connected transports.

Tests on the real broker are marked `rabbitmq` and fail, never skip, when it
is down, so that a CI run without RabbitMQ cannot pass by skipping them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aio_pika
import aiormq
import pytest

from mpnn_async.errors import TransportError
from mpnn_async.transport import MemoryTransport, RabbitMQSettings, RabbitMQTransport, Transport

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
# 128 MiB, RabbitMQ 3.10's default max_message_size.
TEST_MAX_MESSAGE_BYTES = 128 * 1024 * 1024

# Short timeouts, so that a broken broker fails a test in seconds.
TEST_RABBITMQ_SETTINGS = RabbitMQSettings(
    connect_timeout_s=5.0,
    connect_attempts=2,
    connect_backoff_s=0.2,
    reconnect_interval_s=0.2,
    operation_timeout_s=10.0,
    publish_timeout_s=20.0,
)

TRANSPORT_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
]

TransportFactory = Callable[..., Awaitable[Transport]]


# Namespaces of tests that used the broker, for the cleanup at the end of the session.
_broker_namespaces: list[str] = []


def broker_url_from_env() -> str:
    return os.environ.get("MPNN_TEST_BROKER_URL", DEFAULT_BROKER_URL)


@pytest.fixture
def broker_url() -> str:
    """URL of the RabbitMQ broker for tests: env MPNN_TEST_BROKER_URL, else the local default."""
    return broker_url_from_env()


@pytest.fixture
def namespace(request) -> str:
    """A namespace no other test uses, so tests never see each other's queues."""
    name = f"mpnn-test-{uuid.uuid4().hex[:8]}"
    if "broker_url" in request.fixturenames:
        _broker_namespaces.append(name)
    return name


@pytest.fixture(scope="session", autouse=True)
def delete_leftover_broker_entities() -> Iterator[None]:
    """Delete, at the end of the session, queues and exchanges left in the namespaces of broker tests.

    A transport purges only what it declared itself, so queues that worker
    processes declared would stay. The names come from `rabbitmqctl`, so this
    cleans only a broker on this machine, and does nothing where rabbitmqctl
    is missing or not permitted.
    """
    yield
    if not _broker_namespaces or shutil.which("rabbitmqctl") is None:
        return
    prefixes = tuple(f"{name}." for name in _broker_namespaces)
    queues = [name for name in _list_broker_names("list_queues") if name.startswith(prefixes)]
    exchanges = [name for name in _list_broker_names("list_exchanges") if name.startswith(prefixes)]
    if queues or exchanges:
        asyncio.run(_delete_broker_entities(queues, exchanges))


def _list_broker_names(command: str) -> list[str]:
    try:
        listed = subprocess.run(
            ["rabbitmqctl", command, "name", "--quiet", "--no-table-headers"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return listed.stdout.split()


async def _delete_broker_entities(queues: list[str], exchanges: list[str]) -> None:
    try:
        connection = await aio_pika.connect(broker_url_from_env(), timeout=5)
    except (aiormq.exceptions.AMQPError, OSError):
        return
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


async def connect_or_fail(transport: Transport) -> Transport:
    """Connect `transport`; fail the test with instructions when the broker is unreachable."""
    try:
        await transport.connect()
    except TransportError as exc:
        url = transport.redacted_url if isinstance(transport, RabbitMQTransport) else "memory://"
        pytest.fail(
            f"This test needs the RabbitMQ broker at {url}. {exc}\n"
            "Start it (`sudo rabbitmq-server -detached`, or "
            "`docker run -d -p 5672:5672 rabbitmq:3.10`), or point MPNN_TEST_BROKER_URL at a running broker. "
            "scripts/test.sh starts or installs it.",
            pytrace=False,
        )
    return transport


@pytest.fixture
async def transport_factory(broker_url: str, namespace: str) -> AsyncIterator[TransportFactory]:
    """Return `make(kind, **overrides)`, which opens a transport in the test's namespace.

    `kind` is "memory" or "rabbitmq"; overrides go to the constructor (for
    example `max_message_bytes`). At teardown every transport still open
    deletes what it declared (`purge_namespace`) and closes.
    """
    opened: list[Transport] = []

    async def make(kind: str, **overrides: object) -> Transport:
        options: dict[str, object] = {"namespace": namespace, "max_message_bytes": TEST_MAX_MESSAGE_BYTES}
        options.update(overrides)
        transport: Transport
        if kind == "memory":
            transport = MemoryTransport(**options)  # type: ignore[arg-type]
        elif kind == "rabbitmq":
            options.setdefault("settings", TEST_RABBITMQ_SETTINGS)
            transport = RabbitMQTransport(url=broker_url, **options)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown transport kind {kind!r}; use 'memory' or 'rabbitmq'")
        opened.append(transport)
        return await connect_or_fail(transport)

    yield make

    # Purge in reverse order, so the first transport removes the namespace's
    # exchanges after the others have removed their queues.
    for transport in reversed(opened):
        if transport.is_open:
            await transport.purge_namespace()
            await transport.close()


@pytest.fixture(params=TRANSPORT_KINDS)
def transport_kind(request) -> str:
    """Each transport kind in turn: "memory" and "rabbitmq" (marked `rabbitmq`)."""
    return request.param


@pytest.fixture
async def transport(transport_kind: str, transport_factory: TransportFactory) -> Transport:
    """A connected transport of each kind (in-process and RabbitMQ), purged and closed at teardown."""
    return await transport_factory(transport_kind)
