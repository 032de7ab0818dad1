"""Latency of one message hop through `RabbitMQTransport` against plain aio-pika.

One hop is the time from just before the publish call to the entry of the
consumer's handler. The message is persistent, on a durable queue bound to
a topic exchange, published with publisher confirms and `mandatory`, and
consumed with manual acks. The same setup is built twice in this process, on two
connections: once through `RabbitMQTransport` (publish + consume with a
handler) and once with plain aio-pika calls. Samples alternate between the
two, one hop at a time, for a 64 KiB and a 4 MiB body. With
`--max-message-bytes` below a body's size, the transport sends that body in
chunks while plain aio-pika still sends one message, which measures the cost
of chunking. Usage:

    python bench/hop_latency.py [--broker URL] [--hops 200] [--max-message-bytes 1048576]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_line

from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Delivery, Outgoing

SIZES = {"64 KiB": 64 << 10, "4 MiB": 4 << 20}
PREFETCH = 256


class Arrivals:
    """Hands the time of each handler entry to the waiting publisher."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[float] = asyncio.Queue()

    def arrived(self) -> None:
        self.queue.put_nowait(time.perf_counter())

    async def next(self) -> float:
        return await asyncio.wait_for(self.queue.get(), 30)


async def ours(url: str, namespace: str, max_message_bytes: int) -> tuple[object, object]:
    transport = await open_transport(url, namespace=namespace, max_message_bytes=max_message_bytes)
    arrivals = Arrivals()
    queue = await transport.declare_queue("hop", ["hop.ours"], durable=True)

    async def handler(delivery: Delivery) -> None:
        arrivals.arrived()
        await delivery.ack()

    await transport.consume(queue, handler, prefetch=PREFETCH)

    async def hop(body: bytes) -> float:
        started = time.perf_counter()
        await transport.publish(Outgoing("hop.ours", body))
        return await arrivals.next() - started

    return transport, hop


async def raw(url: str, namespace: str) -> tuple[object, object]:
    connection = await aio_pika.connect_robust(url)
    publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
    consumer = await connection.channel(publisher_confirms=False)
    await consumer.set_qos(prefetch_count=PREFETCH)
    exchange = await publisher.declare_exchange(f"{namespace}.raw", aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await consumer.declare_queue(f"{namespace}.rawhop", durable=True)
    await queue.bind(f"{namespace}.raw", "hop.raw")
    arrivals = Arrivals()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        arrivals.arrived()
        await message.ack()

    tag = await queue.consume(on_message, no_ack=False)

    async def hop(body: bytes) -> float:
        started = time.perf_counter()
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(message, "hop.raw", mandatory=True)
        return await arrivals.next() - started

    async def cleanup() -> None:
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()

    return cleanup, hop


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("MPNN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--hops", type=int, default=200)
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=128 << 20,
        help="the transport's max_message_bytes; larger bodies are sent in chunks (default 134217728)",
    )
    args = parser.parse_args()

    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    print(machine_line())
    print(f"broker {namespace}; persistent messages, durable queue, confirms, mandatory, manual ack; "
          f"{args.hops} hops per size and path, alternating; max_message_bytes {args.max_message_bytes}")
    transport, ours_hop = await ours(args.broker, namespace, args.max_message_bytes)
    raw_cleanup, raw_hop = await raw(args.broker, namespace)
    try:
        print(f"{'size':>7} {'raw p50 ms':>11} {'raw p99 ms':>11} {'ours p50 ms':>12} {'ours p99 ms':>12} {'p50 ratio':>10}")
        for label, size in SIZES.items():
            body = np.random.default_rng(0).bytes(size)
            for _ in range(5):  # warm-up
                await ours_hop(body)
                await raw_hop(body)
            ours_s, raw_s = [], []
            for _ in range(args.hops):
                ours_s.append(await ours_hop(body))
                raw_s.append(await raw_hop(body))
            ours_ms, raw_ms = np.array(ours_s) * 1000, np.array(raw_s) * 1000
            ratio = np.percentile(ours_ms, 50) / np.percentile(raw_ms, 50)
            print(f"{label:>7} {np.percentile(raw_ms, 50):>11.2f} {np.percentile(raw_ms, 99):>11.2f} "
                  f"{np.percentile(ours_ms, 50):>12.2f} {np.percentile(ours_ms, 99):>12.2f} {ratio:>10.2f}  (target <= 1.2)")
    finally:
        await raw_cleanup()
        await transport.delete_queue(transport.queue_name("hop"))
        await transport.purge_namespace()
        await transport.close()
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    asyncio.run(main())
