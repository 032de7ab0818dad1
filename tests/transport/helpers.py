"""Helpers for the transport tests: a recording handler and polling waits."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest

from mpnn_async.transport import Delivery

WAIT_TIMEOUT_S = 10.0


class Inbox:
    """A handler that records every delivery it gets, and acks each one when `auto_ack` is set."""

    def __init__(self, *, auto_ack: bool) -> None:
        self.auto_ack = auto_ack
        self.deliveries: list[Delivery] = []
        self._arrived = asyncio.Condition()

    def __repr__(self) -> str:
        return f"<Inbox received={len(self.deliveries)} auto_ack={self.auto_ack}>"

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.auto_ack:
            await delivery.ack()
        async with self._arrived:
            self._arrived.notify_all()

    async def wait_for_count(self, count: int, timeout_s: float = WAIT_TIMEOUT_S) -> list[Delivery]:
        """Wait until at least `count` deliveries arrived; return them all."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.deliveries) >= count), timeout_s)
        return list(self.deliveries)

    @property
    def bodies(self) -> list[bytes]:
        return [delivery.body for delivery in self.deliveries]


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float = WAIT_TIMEOUT_S,
    what: str = "condition",
) -> None:
    """Poll `condition` (plain or async) every 10 ms until it is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


async def depth_equals(transport, queue: str, expected: int) -> None:
    """Wait until `queue` has `expected` ready messages."""

    async def reached() -> bool:
        return await transport.queue_depth(queue) == expected

    await wait_until(reached, what=f"queue {queue} to hold {expected} ready messages")
