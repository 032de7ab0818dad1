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
    """Return the workers heard within `listen_s` and the depth of each partition queue they host.

    Workers send a heartbeat every second by default, so listening for two
    seconds hears every live one.
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
        try:
            depths[partition] = await transport.queue_depth(transport.queue_name(f"part.{partition}"))
        except QueueNotFoundError:
            depths[partition] = None
    replicas = {p: sum(p in worker["partitions"] for worker in heard.values()) for p in partitions}
    return {
        "listened_s": round(time.monotonic() - started, 2),
        "workers": sorted(heard.values(), key=lambda worker: worker["worker"]),
        "partitions": [
            {"partition": p, "workers": replicas[p], "queue_depth": depths[p]} for p in partitions
        ],
    }
