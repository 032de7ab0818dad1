"""Bodies over max_message_bytes travel as chunks, on the in-process transport and on the real RabbitMQ broker.

The transports get a 64 KiB limit so that multi-chunk bodies stay small and
the tests fast. Crafted chunk sets (duplicates, gaps, broken headers) are
built with `ChunkPublisher.split` and published one chunk at a time, each
within the limit, as a faulty or foreign publisher would send them.
"""

from __future__ import annotations

import asyncio

import pytest

from mpnn_async.transport import Outgoing, Transport
from mpnn_async.transport.base import HANDLER_ERROR_REASON, REJECT_REASON_HEADER
from mpnn_async.transport.chunking import CRC32_HEADER, INDEX_HEADER, SEQUENCE_HEADER, ChunkPublisher
from tests.transport.chunks import (
    LIMIT,
    SENTINEL,
    Receiver,
    chunks_of,
    dead_letter_reasons,
    publish_in_order,
    random_bytes,
    raw_messages,
    with_headers,
)
from tests.transport.helpers import WAIT_TIMEOUT_S, Inbox, depth_equals

# Just under, at and just over the limit, two chunks exactly and just over, and well over it.
SIZES = [LIMIT - 1, LIMIT, LIMIT + 1, 2 * LIMIT, 2 * LIMIT + 1, 10 * LIMIT + 123, 4 * 1024 * 1024 + 3]


@pytest.fixture
async def limited(transport_kind, transport_factory) -> Transport:
    """A transport of each kind whose max_message_bytes is 64 KiB."""
    return await transport_factory(transport_kind, max_message_bytes=LIMIT)


async def test_bodies_round_trip_bit_exact(limited):
    queue = await limited.declare_queue("exact", ["exact"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=100)
    bodies = [random_bytes(size, seed) for seed, size in enumerate(SIZES)]
    headers = {"job": "j1", "step": 4}

    for body in bodies:
        await limited.publish(
            Outgoing("exact", body, headers=headers, reply_to="replies", correlation_id="c-9", persistent=False)
        )
    deliveries = await inbox.wait_for_count(len(bodies))

    assert [len(delivery.body) for delivery in deliveries] == SIZES
    assert [delivery.body == body for delivery, body in zip(deliveries, bodies)] == [True] * len(bodies)
    for delivery in deliveries:
        assert dict(delivery.headers) == headers
        assert delivery.reply_to == "replies"
        assert delivery.correlation_id == "c-9"
        assert delivery.persistent is False
        assert delivery.redelivered is False
    await inbox.check_slots_free(limited, "exact", 100)
    await depth_equals(limited, queue, 0)
    assert await limited.queue_depth(limited.dead_letter_queue) == 0


async def test_concurrent_bodies_round_trip_bit_exact(limited):
    queue = await limited.declare_queue("concurrent", ["concurrent"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=64)
    bodies = [random_bytes(3 * LIMIT + index, seed=index) for index in range(6)]
    small = [bytes([index]) for index in range(6)]

    await limited.publish_many(Outgoing("concurrent", body) for pair in zip(bodies, small) for body in pair)
    deliveries = await inbox.wait_for_count(12)

    assert sorted(delivery.body for delivery in deliveries) == sorted(bodies + small)
    await inbox.check_slots_free(limited, "concurrent", 64)
    await depth_equals(limited, queue, 0)


async def test_chunks_of_a_message_stay_contiguous(limited, broker_url):
    queue = await limited.declare_queue("contiguous", ["contiguous"])
    bodies = [random_bytes(3 * LIMIT, seed=index) for index in range(4)]

    await limited.publish_many(Outgoing("contiguous", body) for body in bodies)
    stored = await raw_messages(limited, queue, 4 * 3, broker_url)

    sequences = [headers[SEQUENCE_HEADER] for headers, _ in stored]
    assert sequences == sorted(sequences)
    assert [headers[INDEX_HEADER] for headers, _ in stored] == [0, 1, 2] * 4
    assert max(len(body) for _, body in stored) == LIMIT


async def test_unsettled_message_returns_every_chunk(limited):
    queue = await limited.declare_queue("held", ["held"])
    held = Inbox(auto_ack=False)
    tag = await limited.consume(queue, held, prefetch=8)
    body = random_bytes(5 * LIMIT)

    await limited.publish(Outgoing("held", body))
    [first] = await held.wait_for_count(1)
    await limited.cancel(tag)
    await depth_equals(limited, queue, 5)
    again = Inbox(auto_ack=True)
    await limited.consume(queue, again, prefetch=8)
    [second] = await again.wait_for_count(1)

    assert first.body == body
    assert second.body == body
    assert second.redelivered is True
    await depth_equals(limited, queue, 0)


async def test_partial_set_survives_consumer_restart(limited):
    queue = await limited.declare_queue("restart", ["restart"])
    inbox = Receiver()
    tag = await limited.consume(queue, inbox, prefetch=8)
    body = random_bytes(4 * LIMIT)
    chunks = chunks_of(body, "restart")

    await publish_in_order(limited, chunks[:3])
    await publish_in_order(limited, [Outgoing("restart", SENTINEL)])
    [sentinel] = await inbox.wait_for_count(1)
    await limited.cancel(tag)
    await depth_equals(limited, queue, 3)
    await limited.publish(chunks[3])
    await limited.consume(queue, inbox, prefetch=8)
    deliveries = await inbox.wait_for_count(2)

    assert sentinel.body == SENTINEL
    assert deliveries[1].body == body
    await inbox.check_slots_free(limited, "restart", 8)
    await depth_equals(limited, queue, 0)
    assert await limited.queue_depth(limited.dead_letter_queue) == 0


async def test_requeue_redelivers_whole_message(limited):
    queue = await limited.declare_queue("requeue", ["requeue"])
    body = random_bytes(3 * LIMIT + 5)
    received: list[tuple[bytes, bool]] = []
    done = asyncio.Event()

    async def requeue_once(delivery):
        received.append((delivery.body, delivery.redelivered))
        if len(received) == 1:
            await delivery.requeue()
        else:
            await delivery.ack()
            done.set()

    await limited.consume(queue, requeue_once, prefetch=8)
    await limited.publish(Outgoing("requeue", body))
    await asyncio.wait_for(done.wait(), WAIT_TIMEOUT_S)

    assert received == [(body, False), (body, True)]
    await depth_equals(limited, queue, 0)


async def test_reject_dead_letters_every_chunk(limited, broker_url):
    queue = await limited.declare_queue("reject", ["reject"])
    body = random_bytes(3 * LIMIT)

    async def reject(delivery):
        await delivery.reject("bad-block", "rejected by the test")

    await limited.consume(queue, reject, prefetch=8)
    await limited.publish(Outgoing("reject", body, headers={"job": "j1"}))
    await depth_equals(limited, limited.dead_letter_queue, 3)
    dead = await raw_messages(limited, limited.dead_letter_queue, 3, broker_url)

    assert [headers[REJECT_REASON_HEADER] for headers, _ in dead] == ["bad-block"] * 3
    assert [headers["job"] for headers, _ in dead] == ["j1"] * 3
    assert b"".join(chunk for _, chunk in dead) == body
    await depth_equals(limited, queue, 0)


async def test_dead_letter_consumer_gets_chunks_one_by_one(limited):
    queue = await limited.declare_queue("dead-reader", ["dead-reader"])

    async def reject(delivery):
        await delivery.reject("bad-block")

    await limited.consume(queue, reject, prefetch=8)
    await limited.publish(Outgoing("dead-reader", random_bytes(2 * LIMIT + 1)))
    dead_inbox = Inbox(auto_ack=True)
    await limited.consume(limited.dead_letter_queue, dead_inbox, prefetch=8)
    dead = await dead_inbox.wait_for_count(3)

    assert [delivery.headers[INDEX_HEADER] for delivery in dead] == [0, 1, 2]
    assert [len(delivery.body) for delivery in dead] == [LIMIT, LIMIT, 1]


async def test_handler_error_dead_letters_every_chunk(limited, broker_url):
    queue = await limited.declare_queue("raises", ["raises"])

    async def fail(delivery):
        raise RuntimeError("handler broke")

    await limited.consume(queue, fail, prefetch=8)
    await limited.publish(Outgoing("raises", random_bytes(2 * LIMIT + 1)))

    assert await dead_letter_reasons(limited, 3, broker_url) == [HANDLER_ERROR_REASON] * 3
    await depth_equals(limited, queue, 0)


async def test_duplicate_chunk_is_dropped(limited):
    queue = await limited.declare_queue("duplicate", ["duplicate"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=8)
    body = random_bytes(3 * LIMIT)
    chunks = chunks_of(body, "duplicate")

    await publish_in_order(limited, [chunks[0], chunks[1], chunks[1], chunks[2], Outgoing("duplicate", SENTINEL)])
    deliveries = await inbox.wait_for_count(2)

    assert [delivery.body for delivery in deliveries] == [body, SENTINEL]
    await inbox.check_slots_free(limited, "duplicate", 8)
    await depth_equals(limited, queue, 0)
    assert await limited.queue_depth(limited.dead_letter_queue) == 0


async def test_late_chunk_of_acked_message_is_dropped(limited):
    queue = await limited.declare_queue("late", ["late"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=8)
    body = random_bytes(2 * LIMIT + 1)
    chunks = chunks_of(body, "late")

    await publish_in_order(limited, chunks)
    await inbox.wait_for_count(1)
    await publish_in_order(limited, [chunks[1], Outgoing("late", SENTINEL)])
    deliveries = await inbox.wait_for_count(2)

    assert [delivery.body for delivery in deliveries] == [body, SENTINEL]
    await inbox.check_slots_free(limited, "late", 8)
    await depth_equals(limited, queue, 0)
    assert await limited.queue_depth(limited.dead_letter_queue) == 0


async def test_late_chunk_of_rejected_message_is_dead_lettered(limited, broker_url):
    queue = await limited.declare_queue("late-reject", ["late-reject"])
    chunks = chunks_of(random_bytes(2 * LIMIT + 1), "late-reject")

    async def reject_whole(delivery):
        if delivery.body != SENTINEL:
            await delivery.reject("bad-block")
        else:
            await delivery.ack()

    await limited.consume(queue, reject_whole, prefetch=8)
    await publish_in_order(limited, chunks)
    await depth_equals(limited, limited.dead_letter_queue, 3)
    await publish_in_order(limited, [chunks[2], Outgoing("late-reject", SENTINEL)])

    assert await dead_letter_reasons(limited, 4, broker_url) == ["bad-block"] * 4
    await depth_equals(limited, queue, 0)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"publisher": None}, id="no-publisher"),
        pytest.param({"publisher": ""}, id="empty-publisher"),
        pytest.param({"count": "3"}, id="count-as-text"),
        pytest.param({"count": 1}, id="count-one"),
        pytest.param({"index": 3}, id="index-out-of-range"),
        pytest.param({"sequence": -1}, id="negative-sequence"),
        pytest.param({"total_bytes": 10}, id="total-below-chunk"),
        pytest.param({"crc32": 1 << 33}, id="crc-over-32-bits"),
        pytest.param({"index": None}, id="no-index"),
    ],
)
async def test_malformed_chunk_header_is_dead_lettered(limited, broker_url, changes):
    queue = await limited.declare_queue("malformed", ["malformed"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=8)
    chunk = with_headers(chunks_of(random_bytes(3 * LIMIT), "malformed")[0], **changes)

    await publish_in_order(limited, [chunk, Outgoing("malformed", SENTINEL)])
    deliveries = await inbox.wait_for_count(1)

    assert [delivery.body for delivery in deliveries] == [SENTINEL]
    assert await dead_letter_reasons(limited, 1, broker_url) == ["invalid-chunk-header"]
    await inbox.check_slots_free(limited, "malformed", 8)
    await depth_equals(limited, queue, 0)


async def test_disagreeing_chunk_is_dead_lettered(limited, broker_url):
    queue = await limited.declare_queue("disagree", ["disagree"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=8)
    body = random_bytes(3 * LIMIT)
    chunks = chunks_of(body, "disagree")
    impostor = with_headers(chunks[1], total_bytes=3 * LIMIT + 1)

    await publish_in_order(limited, [chunks[0], impostor, chunks[1], chunks[2]])
    deliveries = await inbox.wait_for_count(1)

    assert deliveries[0].body == body
    assert await dead_letter_reasons(limited, 1, broker_url) == ["invalid-chunk-header"]
    await inbox.check_slots_free(limited, "disagree", 8)


async def test_corrupt_set_is_dead_lettered(limited, broker_url):
    queue = await limited.declare_queue("corrupt", ["corrupt"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=8)
    chunks = chunks_of(random_bytes(3 * LIMIT), "corrupt")
    wrong_crc = chunks[0].headers[CRC32_HEADER] ^ 1
    corrupt = [with_headers(chunk, crc32=wrong_crc) for chunk in chunks]

    await publish_in_order(limited, [*corrupt, Outgoing("corrupt", SENTINEL)])
    deliveries = await inbox.wait_for_count(1)

    assert [delivery.body for delivery in deliveries] == [SENTINEL]
    assert await dead_letter_reasons(limited, 3, broker_url) == ["chunk-set-corrupt"] * 3
    await inbox.check_slots_free(limited, "corrupt", 8)


async def test_more_chunks_than_prefetch_are_dead_lettered(limited, broker_url, caplog):
    queue = await limited.declare_queue("over-prefetch", ["over-prefetch"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=4)

    await limited.publish(Outgoing("over-prefetch", random_bytes(6 * LIMIT)))
    await limited.publish(Outgoing("over-prefetch", SENTINEL))
    deliveries = await inbox.wait_for_count(1)

    assert [delivery.body for delivery in deliveries] == [SENTINEL]
    assert await dead_letter_reasons(limited, 6, broker_url) == ["chunk-count-over-prefetch"] * 6
    assert "has 6 chunks but the consumer's prefetch is 4" in caplog.text
    await inbox.check_slots_free(limited, "over-prefetch", 4)
    await depth_equals(limited, queue, 0)


async def test_full_prefetch_drops_newest_set(limited, broker_url, caplog):
    queue = await limited.declare_queue("full", ["full"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=4)
    first_body, second_body = random_bytes(3 * LIMIT, seed=1), random_bytes(3 * LIMIT, seed=2)
    first = chunks_of(first_body, "full")
    second = chunks_of(second_body, "full")
    interleaved = [chunk for pair in zip(first, second) for chunk in pair]

    await publish_in_order(limited, [*interleaved, Outgoing("full", SENTINEL)])
    deliveries = await inbox.wait_for_count(2)

    assert [delivery.body for delivery in deliveries] == [first_body, SENTINEL]
    assert await dead_letter_reasons(limited, 3, broker_url) == ["chunks-fill-prefetch"] * 3
    assert "held all 4 prefetch slots" in caplog.text
    await inbox.check_slots_free(limited, "full", 4)
    await depth_equals(limited, queue, 0)


async def test_overtaken_set_is_dead_lettered(limited, broker_url):
    queue = await limited.declare_queue("overtaken", ["overtaken"])
    inbox = Receiver()
    await limited.consume(queue, inbox, prefetch=16)
    publisher = ChunkPublisher(max_message_bytes=LIMIT)
    broken = chunks_of(random_bytes(3 * LIMIT, seed=1), "overtaken", publisher)
    body = random_bytes(3 * LIMIT, seed=2)
    whole = chunks_of(body, "overtaken", publisher)

    await publish_in_order(limited, [broken[0], broken[1], *whole])
    deliveries = await inbox.wait_for_count(1)

    assert deliveries[0].body == body
    assert await dead_letter_reasons(limited, 2, broker_url) == ["chunk-set-incomplete"] * 2
    await inbox.check_slots_free(limited, "overtaken", 16)
    await depth_equals(limited, queue, 0)


async def test_queue_holds_chunks_without_consumer(limited):
    queue = await limited.declare_queue("stored", ["stored"])

    await limited.publish(Outgoing("stored", random_bytes(2 * LIMIT + 1)))

    assert await limited.queue_depth(queue) == 3
