"""Cost of one hop through `MemoryTransport`: publish a message and wait for its handler's entry.

There is no broker and no network, so what remains is the transport's own
code on the publish and delivery paths: validation, routing, chunking
checks and the handler call. A change to that code shows up here even on a
busy machine, where `hop_latency.py` is too noisy. Usage:

    python bench/memory_hop.py [--hops 20000] [--rounds 7] [--size-bytes 65536]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_line

from mpnn_async.transport import Outgoing, open_transport
from mpnn_async.transport.base import Delivery


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=20000, help="hops per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size-bytes", type=int, default=64 * 1024, help="body size in bytes")
    args = parser.parse_args()

    print(machine_line())
    transport = await open_transport(None, namespace="bench-memory-hop", max_message_bytes=128 << 20)
    queue = await transport.declare_queue("hop", ["hop"])
    arrivals: asyncio.Queue[None] = asyncio.Queue()

    async def handler(delivery: Delivery) -> None:
        arrivals.put_nowait(None)
        await delivery.ack()

    await transport.consume(queue, handler, prefetch=256)
    body = bytes(args.size_bytes)
    wall_us, cpu_us = [], []
    for _ in range(args.rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        for _ in range(args.hops):
            await transport.publish(Outgoing("hop", body))
            await arrivals.get()
        wall_us.append((time.perf_counter() - started) / args.hops * 1e6)
        cpu_us.append((time.process_time() - started_cpu) / args.hops * 1e6)
    await transport.close()
    # CPU time is less disturbed than wall time by other processes on a busy machine.
    print(
        f"{args.size_bytes} B bodies, {args.hops} hops x {args.rounds} rounds: per hop, median "
        f"{statistics.median(wall_us):.2f} us wall (min {min(wall_us):.2f}), "
        f"{statistics.median(cpu_us):.2f} us CPU (min {min(cpu_us):.2f})"
    )


if __name__ == "__main__":
    asyncio.run(main())
