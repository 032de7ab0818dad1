"""Chunked messages across a lost connection, on the real RabbitMQ broker."""

from __future__ import annotations

import aio_pika
import pytest

from mpnn_async.transport import Outgoing
from mpnn_async.transport.chunking import INDEX_HEADER
from tests.transport.chunks import LIMIT, SENTINEL, Receiver, chunks_of, publish_in_order, random_bytes
from tests.transport.helpers import Inbox, depth_equals, wait_until

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def rabbitmq(transport_factory):
    return await transport_factory("rabbitmq", max_message_bytes=LIMIT)


async def cut_connection(transport) -> None:
    """Close the socket under the robust connection, as a network failure would, and wait for the reconnect."""
    reconnects = transport.reconnect_count
    await transport.connection.transport.connection.close(ConnectionResetError("cut by the test"))
    await wait_until(lambda: transport.reconnect_count == reconnects + 1, what="the transport to reconnect")


async def test_partial_set_completes_after_reconnect(rabbitmq):
    queue = await rabbitmq.declare_queue("partial", ["partial"])
    inbox = Receiver()
    await rabbitmq.consume(queue, inbox, prefetch=8)
    body = random_bytes(3 * LIMIT)
    chunks = chunks_of(body, "partial")

    await publish_in_order(rabbitmq, [chunks[0], chunks[1], Outgoing("partial", SENTINEL)])
    await inbox.wait_for_count(1)
    await cut_connection(rabbitmq)
    await rabbitmq.publish(chunks[2])
    deliveries = await inbox.wait_for_count(2)

    assert deliveries[1].body == body
    assert deliveries[1].redelivered is True
    await inbox.check_slots_free(rabbitmq, "partial", 8)
    assert await rabbitmq.queue_depth(rabbitmq.dead_letter_queue) == 0


async def test_held_message_delivered_again_after_reconnect(rabbitmq):
    queue = await rabbitmq.declare_queue("held", ["held"])
    inbox = Inbox(auto_ack=False)
    await rabbitmq.consume(queue, inbox, prefetch=8)
    body = random_bytes(3 * LIMIT + 7)

    await rabbitmq.publish(Outgoing("held", body))
    [held] = await inbox.wait_for_count(1)
    await cut_connection(rabbitmq)
    deliveries = await inbox.wait_for_count(2)
    # Its channel is gone, so this requeue does nothing: the broker has put the chunks back already.
    await held.requeue()
    await deliveries[1].ack()

    assert held.is_stale
    assert deliveries[1].body == body
    assert deliveries[1].redelivered is True
    await depth_equals(rabbitmq, queue, 0)
    assert await rabbitmq.queue_depth(rabbitmq.dead_letter_queue) == 0


async def test_broker_dead_lettered_chunk_reaches_handler(rabbitmq, broker_url):
    queue = await rabbitmq.declare_queue("broker-dead", ["broker-dead"])
    await rabbitmq.publish(Outgoing("broker-dead", random_bytes(2 * LIMIT + 1)))

    async with await aio_pika.connect(broker_url) as connection:
        channel = await connection.channel()
        raw_queue = await channel.get_queue(queue, ensure=False)
        first = await raw_queue.get(timeout=10)
        # Rejected without requeue, so RabbitMQ dead-letters it itself and adds x-death.
        await first.reject(requeue=False)
    dead_inbox = Inbox(auto_ack=True)
    await rabbitmq.consume(rabbitmq.dead_letter_queue, dead_inbox, prefetch=8)
    [dead] = await dead_inbox.wait_for_count(1)

    assert dead.headers[INDEX_HEADER] == 0
    assert len(dead.body) == LIMIT
    assert dead.headers["x-death"][0]["queue"] == queue
