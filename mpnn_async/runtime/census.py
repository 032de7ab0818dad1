"""A census of live workers: listen to heartbeats for a moment, and read queue depths."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from mpnn_async.runtime.protocol import HEARTBEATS_ROUTING_KEY, ControlType, parse_control
from mpnn_async.transport.base import Delivery, QueueNotFoundError, Transport
from mpnn_async.wire import CodecError

__all__ = ["take_census"]


async def take_census(transport: Transport, *, listen_s: float) -> dict[str, Any]:
    """Return the workers heard within `listen_s` and the messages queued for each partition.

    A partition's count adds its shared queue and the own queues of its
    workers. Workers send a heartbeat twice a second by default, so listening
    for one second hears every live one.
    """
    heard: dict[str, dict[str, Any]] = {}
    started = time.monotonic()

    async def on_heartbeat(delivery: Delivery) -> None:
        try:
            kind, payload = parse_control(delivery.body, max_size_bytes=1 << 20)
        except CodecError:
            kind, payload = None, {}
        if kind is ControlType.HEARTBEAT:
            heard[payload["worker"]] = {
                "worker": payload["worker"],
                "partitions": sorted(str(p) for p in payload["partitions"]),
                # A pool worker was started without partitions; schedulers assign them.
                "pool": bool(payload.get("assignable", False)),
                "heartbeat_interval_s": payload["interval_s"],
                "last_heartbeat_s_ago": 0.0,
                "_seen": time.monotonic(),
            }
        await delivery.ack()

    queue = await transport.declare_queue(
        f"census.{uuid.uuid4().hex[:12]}", [HEARTBEATS_ROUTING_KEY], durable=False, exclusive=True, auto_delete=True
    )
    tag = await transport.consume(queue, on_heartbeat, prefetch=64)
    try:
        await asyncio.sleep(listen_s)
    finally:
        await transport.cancel(tag)
        await transport.delete_queue(queue)
    now = time.monotonic()
    for worker in heard.values():
        worker["last_heartbeat_s_ago"] = round(now - worker.pop("_seen"), 2)
    partitions = sorted({p for worker in heard.values() for p in worker["partitions"]})
    depths: dict[str, int | None] = {}
    for partition in partitions:
        depths[partition] = await _depth_or_none(transport, transport.queue_name(f"part.{partition}"))
    # A replica's own queue holds the blocks routed to it: a long one marks a straggler.
    for worker in heard.values():
        worker["queue_depths"] = {
            p: await _depth_or_none(transport, transport.queue_name(f"w.{worker['worker']}.{p}"))
            for p in worker["partitions"]
        }
        for p, depth in worker["queue_depths"].items():
            if depth is not None:
                depths[p] = (depths[p] or 0) + depth
    replicas = {p: sum(p in worker["partitions"] for worker in heard.values()) for p in partitions}
    return {
        "listened_s": round(time.monotonic() - started, 2),
        "workers": sorted(heard.values(), key=lambda worker: worker["worker"]),
        "partitions": [
            {"partition": p, "workers": replicas[p], "queue_depth": depths[p]} for p in partitions
        ],
    }


async def _depth_or_none(transport: Transport, queue: str) -> int | None:
    try:
        return await transport.queue_depth(queue)
    except QueueNotFoundError:
        return None
