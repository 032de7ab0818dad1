"""Helpers for the chunking tests: crafted chunk sets, raw broker reads, and a handler that checks prefetch slots."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aio_pika
import numpy as np
import pytest

from mpnn_async.transport import MemoryTransport, Outgoing, Transport
from mpnn_async.transport.base import REJECT_REASON_HEADER
from mpnn_async.transport.chunking import CHUNK_HEADER_PREFIX, ChunkPublisher
from tests.transport.helpers import WAIT_TIMEOUT_S, Inbox, depth_equals, wait_until

# The max_message_bytes of the chunking tests: small, so that bodies of many chunks stay fast.
LIMIT = 64 * 1024
SENTINEL = b"sentinel"
PROBE = b"probe-"


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def chunks_of(body: bytes, routing_key: str, publisher: ChunkPublisher | None = None) -> list[Outgoing]:
    """Return the chunk messages a transport with the 64 KiB limit publishes for `body`."""
    publisher = publisher or ChunkPublisher(max_message_bytes=LIMIT)
    return list(publisher.split(Outgoing(routing_key, body)))


def with_headers(message: Outgoing, **changes: Any) -> Outgoing:
    """Return `message` with chunk headers changed; a value of None removes the header."""
    headers = dict(message.headers)
    for name, value in changes.items():
        header = CHUNK_HEADER_PREFIX + name.replace("_", "-")
        if value is None:
            headers.pop(header, None)
        else:
            headers[header] = value
    return dataclasses.replace(message, headers=headers)


class Receiver(Inbox):
    """A handler that acks every delivery except probes, which it keeps until `check_slots_free` ends."""

    def __init__(self) -> None:
        super().__init__(auto_ack=False)

    async def __call__(self, delivery) -> None:
        if not delivery.body.startswith(PROBE):
            await delivery.ack()
        await super().__call__(delivery)

    @property
    def messages(self) -> list[bytes]:
        return [body for body in self.bodies if not body.startswith(PROBE)]

    async def check_slots_free(self, transport: Transport, routing_key: str, prefetch: int) -> None:
        """Fail unless `prefetch` held probes all arrive, which they cannot while a chunk is left unsettled."""
        received = len(self.deliveries)
        await transport.publish_many(Outgoing(routing_key, PROBE + bytes([index % 256])) for index in range(prefetch))
        try:
            await self.wait_for_count(received + prefetch)
        except TimeoutError:
            pytest.fail(
                f"only {len(self.deliveries) - received} of {prefetch} probes arrived: a prefetch slot is "
                "still held by a chunk that was never settled"
            )
        for delivery in self.deliveries[received:]:
            await delivery.ack()


async def publish_in_order(transport: Transport, messages: list[Outgoing]) -> None:
    for message in messages:
        await transport.publish(message)


async def raw_messages(transport: Transport, queue: str, count: int, broker_url: str) -> list[tuple[dict, bytes]]:
    """Return the headers and body of the first `count` ready messages of `queue`, as stored on the broker.

    On RabbitMQ this takes them off the queue; on the in-process broker it leaves them.
    """
    if isinstance(transport, MemoryTransport):
        stored = transport.broker.get_queue(queue)
        await wait_until(lambda: len(stored.ready) >= count, what=f"{count} messages in {queue}")
        return [(dict(message.headers), message.body) for message in list(stored.ready)[:count]]
    found: list[tuple[dict, bytes]] = []
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    async with await aio_pika.connect(broker_url) as connection:
        channel = await connection.channel()
        raw_queue = await channel.get_queue(queue, ensure=False)
        while len(found) < count:
            message = await raw_queue.get(no_ack=True, fail=False, timeout=WAIT_TIMEOUT_S)
            if message is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"timed out waiting for {count} messages in {queue}; got {len(found)}")
                await asyncio.sleep(0.01)
                continue
            found.append((dict(message.headers), message.body))
    return found


async def dead_letter_reasons(transport: Transport, count: int, broker_url: str) -> list[str]:
    """Wait for `count` dead letters; return their reject reasons."""
    await depth_equals(transport, transport.dead_letter_queue, count)
    dead = await raw_messages(transport, transport.dead_letter_queue, count, broker_url)
    return [headers[REJECT_REASON_HEADER] for headers, _ in dead]
