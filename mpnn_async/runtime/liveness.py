"""Worker liveness from heartbeats: which partitions have a worker alive right now."""

from __future__ import annotations

import time
from typing import Iterable

__all__ = ["Liveness"]


class Liveness:
    """Last heartbeat per worker; a worker is alive while its last beat is younger than `timeout_s`."""

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._beats: dict[str, tuple[float, tuple[str, ...]]] = {}
        # Workers of the pool: started without fixed partitions, so they may be assigned some.
        self.assignable: set[str] = set()
        # Worker id -> the process instance of its last beat, and the instances it replaced.
        # A replaced instance that beats again means two live processes share the id.
        self._instances: dict[str, str] = {}
        self._replaced: dict[str, set[str]] = {}
        self.duplicates: set[str] = set()

    def __repr__(self) -> str:
        alive = sorted(self.live_partitions())
        return f"<Liveness workers={len(self._beats)} live_partitions={alive}>"

    def record(
        self,
        worker: str,
        partitions: Iterable[str],
        *,
        assignable: bool = False,
        instance: str = "",
        now: float | None = None,
    ) -> None:
        names = tuple(partitions)
        now = time.monotonic() if now is None else now
        if instance:
            previous = self._instances.get(worker)
            if instance in self._replaced.get(worker, set()):
                self.duplicates.add(worker)
            if previous is not None and previous != instance:
                self._replaced.setdefault(worker, set()).add(previous)
            self._instances[worker] = instance
        self._beats[worker] = (now, names)
        if assignable:
            self.assignable.add(worker)
        else:
            self.assignable.discard(worker)

    def is_live(self, worker: str, *, now: float | None = None) -> bool:
        beat = self._beats.get(worker)
        now = time.monotonic() if now is None else now
        return beat is not None and now - beat[0] <= self.timeout_s

    def live_workers(self, *, now: float | None = None) -> dict[str, tuple[str, ...]]:
        """Return the partitions of every worker whose last beat is current."""
        now = time.monotonic() if now is None else now
        return {worker: names for worker, (seen, names) in self._beats.items() if now - seen <= self.timeout_s}

    def live_partitions(self, *, now: float | None = None) -> set[str]:
        now = time.monotonic() if now is None else now
        return {
            partition
            for seen, partitions in self._beats.values()
            if now - seen <= self.timeout_s
            for partition in partitions
        }

    def is_lost(self, worker: str, *, now: float | None = None) -> bool:
        """Return True if `worker` sent heartbeats once and its last one is too old."""
        beat = self._beats.get(worker)
        if beat is None:
            return False
        now = time.monotonic() if now is None else now
        return now - beat[0] > self.timeout_s

    def workers(self) -> dict[str, tuple[str, ...]]:
        return {worker: partitions for worker, (_, partitions) in self._beats.items()}
