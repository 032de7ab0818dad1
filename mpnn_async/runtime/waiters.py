"""Futures by key, for replies that may arrive before or after someone waits for them."""

from __future__ import annotations

import asyncio
from typing import Any, Hashable

__all__ = ["Waiters"]


class Waiters:
    """One future per key, created by whichever comes first: the waiter or the result."""

    def __init__(self) -> None:
        self._futures: dict[Hashable, asyncio.Future[Any]] = {}

    def __repr__(self) -> str:
        return f"<Waiters pending={len(self._futures)}>"

    def __len__(self) -> int:
        return len(self._futures)

    def get(self, key: Hashable) -> asyncio.Future[Any]:
        future = self._futures.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._futures[key] = future
        return future

    def peek(self, key: Hashable) -> asyncio.Future[Any] | None:
        """Return the future of `key` only if someone created it."""
        return self._futures.get(key)

    def resolve(self, key: Hashable, value: Any) -> None:
        future = self.get(key)
        if not future.done():
            future.set_result(value)

    def discard(self, key: Hashable) -> None:
        self._futures.pop(key, None)

    def cancel_all(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
