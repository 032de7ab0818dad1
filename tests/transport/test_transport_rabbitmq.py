"""Properties only the RabbitMQ transport has: durability, broker-side dead-lettering, reconnection, credentials."""

from __future__ import annotations

import asyncio
import logging
import traceback

import aio_pika
import aiormq
import pytest

from mpnn_async.errors import TransportError
from mpnn_async.transport import Outgoing, RabbitMQSettings, RabbitMQTransport, open_transport
from mpnn_async.transport.base import REJECT_REASON_HEADER
from tests.conftest import TEST_MAX_MESSAGE_BYTES
from tests.transport.helpers import Inbox, depth_equals, wait_until

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def rabbitmq(transport_factory):
    return await transport_factory("rabbitmq")


@pytest.fixture
async def raw_channel(broker_url):
    """A plain aio-pika channel, to look at the broker without going through the transport."""
    connection = await aio_pika.connect(broker_url)
    async with connection:
        yield await connection.channel()


async def test_messages_persistent_queues_durable(rabbitmq, raw_channel):
    queue = await rabbitmq.declare_queue("durable", ["durable"])
    inbox = Inbox(auto_ack=True)
    await rabbitmq.consume(queue, inbox, prefetch=1)

    await rabbitmq.publish(Outgoing("durable", b"x"))
    [delivery] = await inbox.wait_for_count(1)
    # A declaration succeeds only if it matches the existing queue exactly.
    await raw_channel.declare_queue(
        queue, durable=True, arguments={"x-dead-letter-exchange": rabbitmq.dead_letter_exchange}
    )

    assert delivery.persistent is True
    assert delivery._message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_broker_side_reject_reaches_dead_queue(rabbitmq, raw_channel):
    queue = await rabbitmq.declare_queue("broker-reject", ["broker-reject"])
    await rabbitmq.publish(Outgoing("broker-reject", b"x"))

    message = await raw_channel.get_queue(queue, ensure=False)
    incoming = await message.get(timeout=10)
    await incoming.reject(requeue=False)
    dead_inbox = Inbox(auto_ack=True)
    await rabbitmq.consume(rabbitmq.dead_letter_queue, dead_inbox, prefetch=1)
    [dead] = await dead_inbox.wait_for_count(1)

    assert dead.body == b"x"
    assert dead.headers["x-death"][0]["queue"] == queue
    assert REJECT_REASON_HEADER not in dead.headers


async def test_reconnect_restores_consumer(rabbitmq, caplog):
    caplog.set_level(logging.INFO, logger="mpnn_async.transport")
    queue = await rabbitmq.declare_queue("robust", ["robust.*"])
    inbox = Inbox(auto_ack=False)
    await rabbitmq.consume(queue, inbox, prefetch=5)
    await rabbitmq.publish(Outgoing("robust.before", b"before"))
    [held] = await inbox.wait_for_count(1)

    # Close the socket under the robust connection, as a network failure would.
    await rabbitmq.connection.transport.connection.close(ConnectionResetError("cut by the test"))
    # publish() waits for the publishing channel to be restored.
    await rabbitmq.publish(Outgoing("robust.during", b"during"))
    await wait_until(lambda: rabbitmq.reconnect_count == 1, what="the transport to reconnect")
    await rabbitmq.publish(Outgoing("robust.after", b"after"))
    deliveries = await inbox.wait_for_count(4)
    await held.ack()
    for delivery in deliveries[1:]:
        await delivery.ack()

    assert sorted(delivery.body for delivery in deliveries) == [b"after", b"before", b"before", b"during"]
    redelivered = [delivery for delivery in deliveries[1:] if delivery.body == b"before"]
    assert redelivered[0].redelivered is True
    assert held.is_settled
    assert "transport.reconnected" in caplog.text
    assert "transport.connection_lost" in caplog.text
    await depth_equals(rabbitmq, queue, 0)


async def test_declarations_restored_after_reconnect(rabbitmq):
    queue = await rabbitmq.declare_queue("restored", ["restored"], durable=False, auto_delete=False)

    await rabbitmq.connection.transport.connection.close(ConnectionResetError("cut by the test"))
    await wait_until(lambda: rabbitmq.reconnect_count == 1, what="the transport to reconnect")
    await rabbitmq.publish(Outgoing("restored", b"x"))

    assert await rabbitmq.queue_depth(queue) == 1


async def test_wrong_password_hidden_in_errors(broker_url, namespace, caplog):
    caplog.set_level(logging.DEBUG)
    password = "wrong-secret-7781"
    user_and_host = broker_url.split("://", 1)[1].rsplit("@", 1)[1]
    url = f"amqp://guest:{password}@{user_and_host}"
    settings = RabbitMQSettings(connect_attempts=2, connect_backoff_s=0.01, connect_timeout_s=5)

    with pytest.raises(TransportError) as raised:
        await open_transport(url, namespace=namespace, max_message_bytes=1024, rabbitmq_settings=settings)

    message = str(raised.value)
    assert "rejected the login" in message
    assert "guest:***@" in message
    assert password not in message
    assert password not in "".join(traceback.format_exception(raised.value))
    assert password not in caplog.text


async def test_unreachable_broker_retries_then_fails(namespace, caplog):
    caplog.set_level(logging.WARNING, logger="mpnn_async.transport")
    settings = RabbitMQSettings(connect_attempts=3, connect_backoff_s=0.01, connect_timeout_s=2)
    # Nothing listens on port 1 of the loopback address.
    transport = RabbitMQTransport(
        url="amqp://guest:hunter2@127.0.0.1:1/",
        namespace=namespace,
        max_message_bytes=1024,
        settings=settings,
    )

    with pytest.raises(TransportError, match="after 3 attempts") as raised:
        await transport.connect()

    assert "amqp://guest:***@127.0.0.1:1/" in str(raised.value)
    assert caplog.text.count("transport.connect_failed") == 2
    assert "hunter2" not in caplog.text
    assert not transport.is_open


async def test_publish_many_pipelines_confirms(rabbitmq):
    queue = await rabbitmq.declare_queue("pipelined", ["pipelined"])
    underlay = await rabbitmq._publisher.get_underlay_channel()
    max_outstanding = 0
    done = asyncio.Event()

    async def watch_outstanding_confirms():
        nonlocal max_outstanding
        while not done.is_set():
            max_outstanding = max(max_outstanding, len(underlay.confirmations))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch_outstanding_confirms())
    await rabbitmq.publish_many(Outgoing("pipelined", b"x" * 16) for _ in range(500))
    done.set()
    await watcher

    # One confirm round trip per message would keep at most one outstanding;
    # pipelined runs on a 2-core machine peaked at 35 to 101.
    assert max_outstanding >= 10
    assert await rabbitmq.queue_depth(queue) == 500


async def test_consumers_get_own_channels(rabbitmq):
    first = await rabbitmq.declare_queue("first", ["first"])
    second = await rabbitmq.declare_queue("second", ["second"])
    first_tag = await rabbitmq.consume(first, Inbox(auto_ack=True), prefetch=1)
    second_tag = await rabbitmq.consume(second, Inbox(auto_ack=True), prefetch=3)

    channels = {rabbitmq._consumers[tag].channel for tag in (first_tag, second_tag)}

    assert len(channels) == 2
    assert rabbitmq._publisher not in channels
    assert rabbitmq._admin not in channels


async def test_purge_leaves_nothing_on_broker(transport_factory, broker_url):
    rabbitmq = await transport_factory("rabbitmq")
    queues = [await rabbitmq.declare_queue(name, [name]) for name in ("one", "two")]
    await rabbitmq.publish(Outgoing("one", b"x"))

    await rabbitmq.purge_namespace()
    await rabbitmq.close()

    async with await aio_pika.connect(broker_url) as connection:
        for queue in [*queues, rabbitmq.dead_letter_queue]:
            # A passive declare of a missing entity closes its channel, so each gets a new one.
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await channel.declare_queue(queue, passive=True)
        for exchange in (rabbitmq.data_exchange, rabbitmq.dead_letter_exchange):
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await channel.declare_exchange(exchange, passive=True)


async def test_repr_hides_password(broker_url, namespace):
    transport = RabbitMQTransport(
        url=broker_url, namespace=namespace, max_message_bytes=TEST_MAX_MESSAGE_BYTES
    )

    text = repr(transport)

    assert "guest:***@" in text
    assert ":guest@" not in text
    assert "new" in text
