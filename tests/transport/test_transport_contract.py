"""The transport contract, run on the in-process transport and on the real RabbitMQ broker."""

from __future__ import annotations

import asyncio

import pytest

from mpnn_async.errors import InvalidInputError, TransportError
from mpnn_async.transport import (
    MessageTooLargeError,
    Outgoing,
    QueueMismatchError,
    QueueNotFoundError,
    UnroutableError,
)
from mpnn_async.transport.base import (
    HANDLER_ERROR_REASON,
    MAX_CHUNKS_PER_MESSAGE,
    REJECT_DETAIL_HEADER,
    REJECT_QUEUE_HEADER,
    REJECT_REASON_HEADER,
)
from tests.transport.helpers import Inbox, depth_equals, wait_until

# Binding pattern -> the keys of ROUTING_KEYS it matches under AMQP topic rules.
TOPIC_CASES = {
    "job1.part.p0": {"job1.part.p0"},
    "job1.part.*": {"job1.part.p0", "job1.part.p1"},
    "*.part.p0": {"job1.part.p0", "job2.part.p0"},
    "job1.#": {"job1", "job1.part", "job1.part.p0", "job1.part.p1", "job1.part.p0.extra", "job1.sched"},
    "#.p0": {"job1.part.p0", "job2.part.p0"},
    "*": {"job1"},
    "*.*": {"job1.part", "job1.sched"},
    "job1.*.p0.#": {"job1.part.p0", "job1.part.p0.extra"},
    "#.part.#": {"job1.part", "job1.part.p0", "job1.part.p1", "job1.part.p0.extra", "job2.part.p0"},
    "#": {
        "",
        "job1",
        "job1.part",
        "job1.part.p0",
        "job1.part.p1",
        "job1.part.p0.extra",
        "job1.sched",
        "job2.part.p0",
    },
}
ROUTING_KEYS = sorted(TOPIC_CASES["#"])


async def test_round_trip_keeps_fields(transport):
    queue = await transport.declare_queue("inbox", ["job1.part.p0"])
    inbox = Inbox(auto_ack=True)
    await transport.consume(queue, inbox, prefetch=4)
    headers = {"job": "job1", "step": 3, "scale": 0.5, "last": True}

    await transport.publish(
        Outgoing(
            "job1.part.p0", b"\x00\x01payload", headers=headers, reply_to="job1.reply", correlation_id="c-17"
        )
    )
    [delivery] = await inbox.wait_for_count(1)

    assert delivery.body == b"\x00\x01payload"
    assert dict(delivery.headers) == headers
    assert delivery.routing_key == "job1.part.p0"
    assert delivery.reply_to == "job1.reply"
    assert delivery.correlation_id == "c-17"
    assert delivery.queue == queue
    assert delivery.persistent is True
    assert delivery.redelivered is False


async def test_round_trip_without_optional_fields(transport):
    queue = await transport.declare_queue("bare", ["bare"])
    inbox = Inbox(auto_ack=True)
    await transport.consume(queue, inbox, prefetch=1)

    await transport.publish(Outgoing("bare", b"", persistent=False))
    [delivery] = await inbox.wait_for_count(1)

    assert delivery.body == b""
    assert dict(delivery.headers) == {}
    assert delivery.reply_to is None
    assert delivery.correlation_id is None
    assert delivery.persistent is False


async def test_topic_patterns_route_like_amqp(transport):
    queues = {}
    for index, pattern in enumerate(TOPIC_CASES):
        queues[pattern] = await transport.declare_queue(f"topic{index}", [pattern])

    await transport.publish_many(Outgoing(key, key.encode()) for key in ROUTING_KEYS)

    for pattern, expected_keys in TOPIC_CASES.items():
        assert await transport.queue_depth(queues[pattern]) == len(expected_keys), pattern
        inbox = Inbox(auto_ack=True)
        await transport.consume(queues[pattern], inbox, prefetch=20)
        deliveries = await inbox.wait_for_count(len(expected_keys))
        assert {delivery.routing_key for delivery in deliveries} == expected_keys, pattern


# Keys with empty words: `a..b` is the words a, "" and b.
EMPTY_WORD_CASES = {
    "a.*.b": {"a..b"},
    "a.*": {"a.", "a.b"},
    "*.a": {".a"},
    "#.b": {"a..b", "a.b"},
    "a.#": {"a", "a..b", "a.", "a.b"},
}


async def test_topic_empty_words_route_like_amqp(transport):
    queues = {}
    for index, pattern in enumerate(EMPTY_WORD_CASES):
        queues[pattern] = await transport.declare_queue(f"empty{index}", [pattern])
    await transport.declare_queue("catch-all", ["#"])

    await transport.publish_many(Outgoing(key, key.encode()) for key in ["a", "a..b", "a.", ".a", "a.b"])

    for pattern, expected_keys in EMPTY_WORD_CASES.items():
        assert await transport.queue_depth(queues[pattern]) == len(expected_keys), pattern
        inbox = Inbox(auto_ack=True)
        await transport.consume(queues[pattern], inbox, prefetch=20)
        deliveries = await inbox.wait_for_count(len(expected_keys))
        assert {delivery.routing_key for delivery in deliveries} == expected_keys, pattern


async def test_queue_with_several_bindings_gets_one_copy(transport):
    queue = await transport.declare_queue("multi", ["job1.#", "job1.part.*", "#"])

    await transport.publish(Outgoing("job1.part.p0", b"x"))

    assert await transport.queue_depth(queue) == 1


async def test_fifo_per_queue(transport):
    queue = await transport.declare_queue("fifo", ["fifo"])
    bodies = [f"m{index:03d}".encode() for index in range(100)]
    for body in bodies:
        await transport.publish(Outgoing("fifo", body))
    inbox = Inbox(auto_ack=True)

    await transport.consume(queue, inbox, prefetch=10)
    await inbox.wait_for_count(len(bodies))

    assert inbox.bodies == bodies


async def test_publish_many_thousand_messages_arrive(transport):
    queue = await transport.declare_queue("bulk", ["bulk.*"])
    bodies = [index.to_bytes(4, "little") for index in range(1000)]
    inbox = Inbox(auto_ack=True)
    await transport.consume(queue, inbox, prefetch=200)

    await transport.publish_many(Outgoing(f"bulk.{index % 7}", body) for index, body in enumerate(bodies))
    await inbox.wait_for_count(len(bodies), timeout_s=30)

    assert inbox.bodies == bodies
    assert await transport.queue_depth(queue) == 0


async def test_publish_is_safe_from_many_tasks(transport):
    queue = await transport.declare_queue("tasks", ["tasks"])

    await asyncio.gather(*(transport.publish(Outgoing("tasks", bytes([index]))) for index in range(200)))

    assert await transport.queue_depth(queue) == 200


async def test_ack_removes_message(transport):
    queue = await transport.declare_queue("ack", ["ack"])
    inbox = Inbox(auto_ack=True)
    tag = await transport.consume(queue, inbox, prefetch=1)

    await transport.publish(Outgoing("ack", b"once"))
    await inbox.wait_for_count(1)
    await transport.cancel(tag)

    assert await transport.queue_depth(queue) == 0
    assert inbox.deliveries[0].is_settled


async def test_requeue_redelivers_first_marked(transport):
    queue = await transport.declare_queue("requeue", ["requeue"])
    await transport.publish_many([Outgoing("requeue", b"first"), Outgoing("requeue", b"second")])
    inbox = Inbox(auto_ack=False)
    await transport.consume(queue, inbox, prefetch=1)

    [first] = await inbox.wait_for_count(1)
    await first.requeue()
    deliveries = await inbox.wait_for_count(2)
    await deliveries[1].ack()
    deliveries = await inbox.wait_for_count(3)
    await deliveries[2].ack()

    assert [delivery.body for delivery in deliveries] == [b"first", b"first", b"second"]
    assert [delivery.redelivered for delivery in deliveries] == [False, True, False]


async def test_reject_moves_message_to_dead_letter_queue(transport):
    queue = await transport.declare_queue("reject", ["job1.part.p1"])
    inbox = Inbox(auto_ack=False)
    await transport.consume(queue, inbox, prefetch=1)
    await transport.publish(
        Outgoing("job1.part.p1", b"bad block", headers={"job": "job1", "mb": 4}, correlation_id="c-9")
    )

    [delivery] = await inbox.wait_for_count(1)
    await delivery.reject("shape_mismatch", "rows 3 != 4")
    dead_inbox = Inbox(auto_ack=True)
    await transport.consume(transport.dead_letter_queue, dead_inbox, prefetch=1)
    [dead] = await dead_inbox.wait_for_count(1)

    assert dead.body == b"bad block"
    assert dead.routing_key == "job1.part.p1"
    assert dead.correlation_id == "c-9"
    assert dead.headers["job"] == "job1"
    assert dead.headers["mb"] == 4
    assert dead.headers[REJECT_REASON_HEADER] == "shape_mismatch"
    assert dead.headers[REJECT_DETAIL_HEADER] == "rows 3 != 4"
    assert dead.headers[REJECT_QUEUE_HEADER] == queue
    assert await transport.queue_depth(queue) == 0


async def test_handler_error_rejects_and_continues(transport):
    queue = await transport.declare_queue("failing", ["failing"])
    handled = Inbox(auto_ack=True)

    async def handler(delivery):
        if delivery.body == b"poison":
            raise ValueError("cannot parse poison")
        await handled(delivery)

    await transport.consume(queue, handler, prefetch=2)
    await transport.publish_many([Outgoing("failing", b"poison"), Outgoing("failing", b"good")])
    await handled.wait_for_count(1)
    dead_inbox = Inbox(auto_ack=True)
    await transport.consume(transport.dead_letter_queue, dead_inbox, prefetch=1)
    [dead] = await dead_inbox.wait_for_count(1)

    assert handled.bodies == [b"good"]
    assert dead.body == b"poison"
    assert dead.headers[REJECT_REASON_HEADER] == HANDLER_ERROR_REASON
    assert dead.headers[REJECT_DETAIL_HEADER] == "ValueError: cannot parse poison"


async def test_second_settle_raises(transport):
    queue = await transport.declare_queue("twice", ["twice"])
    inbox = Inbox(auto_ack=True)
    await transport.consume(queue, inbox, prefetch=1)
    await transport.publish(Outgoing("twice", b"x"))
    [delivery] = await inbox.wait_for_count(1)

    with pytest.raises(RuntimeError, match="already settled"):
        await delivery.ack()
    with pytest.raises(RuntimeError, match="already settled"):
        await delivery.reject("late")


async def test_unroutable_publish_raises(transport):
    queue = await transport.declare_queue("routed", ["routed"])

    with pytest.raises(UnroutableError, match="nobody.home"):
        await transport.publish(Outgoing("nobody.home", b"lost"))
    await transport.publish(Outgoing("routed", b"still works"))

    assert await transport.queue_depth(queue) == 1


async def test_publish_many_raises_first_failure(transport):
    queue = await transport.declare_queue("partial", ["partial"])

    with pytest.raises(UnroutableError, match="nobody"):
        await transport.publish_many(
            [Outgoing("partial", b"a"), Outgoing("nobody", b"b"), Outgoing("partial", b"c")]
        )

    assert await transport.queue_depth(queue) == 2


async def test_body_over_max_chunks_raises_before_publish(transport_kind, transport_factory):
    transport = await transport_factory(transport_kind, max_message_bytes=16)
    queue = await transport.declare_queue("sized", ["sized"])
    body = b"x" * (16 * MAX_CHUNKS_PER_MESSAGE + 1)

    with pytest.raises(MessageTooLargeError, match=f"{len(body)} bytes, over the maximum of 65535 chunks of 16") as raised:
        await transport.publish(Outgoing("sized", body))

    assert isinstance(raised.value, InvalidInputError)
    assert await transport.queue_depth(queue) == 0


async def test_prefetch_bounds_held_deliveries(transport):
    queue = await transport.declare_queue("prefetch", ["prefetch"])
    inbox = Inbox(auto_ack=False)
    await transport.consume(queue, inbox, prefetch=3)

    await transport.publish_many(Outgoing("prefetch", bytes([index])) for index in range(5))
    await inbox.wait_for_count(3)
    await depth_equals(transport, queue, 2)
    held_count = len(inbox.deliveries)
    await inbox.deliveries[0].ack()
    await inbox.wait_for_count(4)
    await depth_equals(transport, queue, 1)

    assert held_count == 3
    assert len(inbox.deliveries) == 4
    assert inbox.bodies == [bytes([index]) for index in range(4)]


async def test_handler_calls_are_sequential(transport, transport_kind):
    queue = await transport.declare_queue("sequential", ["sequential"])
    release = asyncio.Event()
    first_started = asyncio.Event()
    running = 0
    max_running = 0
    order: list[bytes] = []

    async def handler(delivery):
        nonlocal running, max_running
        running += 1
        max_running = max(max_running, running)
        order.append(delivery.body)
        if delivery.body == b"0":
            first_started.set()
            await release.wait()
        await delivery.ack()
        running -= 1

    await transport.consume(queue, handler, prefetch=10)
    await transport.publish_many(Outgoing("sequential", str(index).encode()) for index in range(5))
    await asyncio.wait_for(first_started.wait(), 10)
    if transport_kind == "rabbitmq":
        # Every message is now buffered in the client (prefetch 10), so a
        # concurrent dispatch would start the other handlers during the wait.
        await depth_equals(transport, queue, 0)
    for _ in range(20):
        await asyncio.sleep(0.01)
        assert order == [b"0"]
    release.set()
    await wait_until(lambda: len(order) == 5, what="all five handler calls")

    assert order == [b"0", b"1", b"2", b"3", b"4"]
    assert max_running == 1


async def test_cancel_returns_unacked_messages(transport):
    queue = await transport.declare_queue("cancel", ["cancel"])
    held = Inbox(auto_ack=False)
    tag = await transport.consume(queue, held, prefetch=5)
    await transport.publish_many(Outgoing("cancel", bytes([index])) for index in range(3))
    await held.wait_for_count(3)

    await transport.cancel(tag)
    await depth_equals(transport, queue, 3)
    await held.deliveries[0].ack()
    again = Inbox(auto_ack=True)
    await transport.consume(queue, again, prefetch=5)
    await again.wait_for_count(3)

    assert again.bodies == [b"\x00", b"\x01", b"\x02"]
    assert all(delivery.redelivered for delivery in again.deliveries)


async def test_handler_can_cancel_its_own_consumer(transport):
    queue = await transport.declare_queue("self-cancel", ["self-cancel"])
    seen: list[bytes] = []
    tag_box: list[str] = []
    cancelled = asyncio.Event()

    async def handler(delivery):
        seen.append(delivery.body)
        await delivery.ack()
        await transport.cancel(tag_box[0])
        cancelled.set()

    tag_box.append(await transport.consume(queue, handler, prefetch=5))
    await transport.publish_many([Outgoing("self-cancel", b"a"), Outgoing("self-cancel", b"b")])
    await asyncio.wait_for(cancelled.wait(), 10)
    await depth_equals(transport, queue, 1)

    assert seen == [b"a"]


async def test_queue_depth_counts_ready_messages(transport):
    queue = await transport.declare_queue("depth", ["depth"])
    assert await transport.queue_depth(queue) == 0

    await transport.publish_many(Outgoing("depth", b"x") for _ in range(3))

    assert await transport.queue_depth(queue) == 3
    with pytest.raises(QueueNotFoundError):
        await transport.queue_depth(transport.queue_name("never-declared"))


async def test_consume_missing_queue_raises(transport):
    with pytest.raises(QueueNotFoundError):
        await transport.consume(transport.queue_name("never-declared"), Inbox(auto_ack=True), prefetch=1)


async def test_invalid_prefetch_raises(transport):
    queue = await transport.declare_queue("zero", ["zero"])

    with pytest.raises(InvalidInputError, match="prefetch"):
        await transport.consume(queue, Inbox(auto_ack=True), prefetch=0)


async def test_redeclare_with_other_durability_raises(transport):
    await transport.declare_queue("durable", ["durable"], durable=True)

    with pytest.raises(QueueMismatchError, match="durable"):
        await transport.declare_queue("durable", ["durable"], durable=False)
    same = await transport.declare_queue("durable", ["durable.more"], durable=True)
    await transport.publish(Outgoing("durable.more", b"x"))

    assert await transport.queue_depth(same) == 1


async def test_exclusive_queue_refuses_other_connection(transport_kind, transport_factory):
    owner = await transport_factory(transport_kind)
    other = await transport_factory(transport_kind)
    queue = await owner.declare_queue("mine", ["mine"], exclusive=True, durable=False)

    with pytest.raises(TransportError, match="exclusive"):
        await other.consume(queue, Inbox(auto_ack=True), prefetch=1)
    await owner.consume(queue, Inbox(auto_ack=True), prefetch=1)


async def test_delete_queue_removes_messages_and_consumer(transport):
    queue = await transport.declare_queue("doomed", ["doomed"])
    await transport.consume(queue, Inbox(auto_ack=False), prefetch=1)
    await transport.publish(Outgoing("doomed", b"x"))

    await transport.delete_queue(queue)

    with pytest.raises(QueueNotFoundError):
        await transport.queue_depth(queue)
    with pytest.raises(UnroutableError):
        await transport.publish(Outgoing("doomed", b"y"))


async def test_purge_namespace_deletes_everything(transport):
    first = await transport.declare_queue("first", ["a.*"])
    second = await transport.declare_queue("second", ["#"])
    await transport.consume(first, Inbox(auto_ack=False), prefetch=1)
    await transport.publish(Outgoing("a.b", b"x"))

    await transport.purge_namespace()

    for queue in (first, second, transport.dead_letter_queue):
        with pytest.raises(QueueNotFoundError):
            await transport.queue_depth(queue)
    with pytest.raises(TransportError):
        await transport.publish(Outgoing("a.b", b"after purge"))


async def test_closed_transport_refuses_use(transport):
    await transport.purge_namespace()
    await transport.close()

    assert not transport.is_open
    with pytest.raises(TransportError, match="not open"):
        await transport.publish(Outgoing("x", b"x"))


async def test_prefetch_is_per_consumer(transport):
    queue = await transport.declare_queue("shared", ["shared"])
    small = Inbox(auto_ack=False)
    large = Inbox(auto_ack=False)
    await transport.consume(queue, small, prefetch=1)
    await transport.consume(queue, large, prefetch=2)

    await transport.publish_many(Outgoing("shared", bytes([index])) for index in range(5))
    await small.wait_for_count(1)
    await large.wait_for_count(2)
    await depth_equals(transport, queue, 2)

    assert len(small.deliveries) == 1
    assert len(large.deliveries) == 2


async def test_close_returns_unacked_messages(transport_kind, transport_factory):
    closing = await transport_factory(transport_kind)
    staying = await transport_factory(transport_kind)
    queue = await closing.declare_queue("handover", ["handover"])
    # Declared on both, so that the staying transport deletes it at teardown.
    await staying.declare_queue("handover", ["handover"])
    held = Inbox(auto_ack=False)
    await closing.consume(queue, held, prefetch=5)
    await closing.publish_many([Outgoing("handover", b"a"), Outgoing("handover", b"b")])
    await held.wait_for_count(2)

    await closing.close()
    again = Inbox(auto_ack=True)
    await staying.consume(queue, again, prefetch=5)
    await again.wait_for_count(2)

    assert again.bodies == [b"a", b"b"]
    assert all(delivery.redelivered for delivery in again.deliveries)


async def test_non_mandatory_unroutable_publish_is_dropped(transport) -> None:
    await transport.publish(Outgoing("nobody.listens", b"event", mandatory=False))

    with pytest.raises(UnroutableError):
        await transport.publish(Outgoing("nobody.listens", b"event"))
