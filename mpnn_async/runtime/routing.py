"""Routes: which replica of each partition serves one micro-batch.

All blocks of one micro-batch that a partition needs must reach the same
replica, because that replica gathers the slices of every sender. The
scheduler therefore picks one live worker per partition for each attempt of a
micro-batch (its route), and every block of that attempt carries the route, so
each sender addresses the next replica's own queue.
"""

from __future__ import annotations

import collections
import logging
import statistics
from typing import Iterable

from mpnn_async.errors import MpnnError
from mpnn_async.planning import Plan
from mpnn_async.runtime.liveness import Liveness

__all__ = ["NoLiveReplica", "ReplicaSet", "Route"]

log = logging.getLogger(__name__)

# Worker id per plan partition, in the plan's partition order.
Route = tuple[str, ...]

# A micro-batch that takes this many times the median time of the step's
# other micro-batches marks the workers of its route as stragglers.
_STRAGGLER_FACTOR = 3.0


class NoLiveReplica(MpnnError):
    """A partition has no loaded worker with current heartbeats."""

    def __init__(self, partitions: list[str]) -> None:
        super().__init__(f"no live loaded worker for partitions {partitions}")
        self.partitions = partitions


class ReplicaSet:
    """The workers that loaded each partition of a job in the current generation."""

    def __init__(self, plan: Plan, liveness: Liveness) -> None:
        self.plan = plan
        self.liveness = liveness
        self.loaded: dict[str, list[str]] = {partition: [] for partition in plan.partitions}
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._durations: dict[str, list[float]] = collections.defaultdict(list)
        self.stragglers: set[str] = set()

    def __repr__(self) -> str:
        return f"<ReplicaSet {self.loaded}>"

    def reset(self, loaded: dict[str, list[str]]) -> None:
        self.loaded = {partition: list(loaded.get(partition, [])) for partition in self.plan.partitions}
        self._in_flight.clear()

    def workers(self) -> set[str]:
        return {worker for workers in self.loaded.values() for worker in workers}

    def live(self, partition: str) -> list[str]:
        return [worker for worker in self.loaded[partition] if not self.liveness.is_lost(worker)]

    def without_live_replica(self) -> list[str]:
        return [partition for partition in self.plan.partitions if not self.live(partition)]

    def lost_workers(self) -> set[str]:
        return {worker for worker in self.workers() if self.liveness.is_lost(worker)}

    def drop(self, worker: str) -> None:
        """Take a worker out of every route; it must reload the job to come back."""
        for workers in self.loaded.values():
            if worker in workers:
                workers.remove(worker)

    def replicas(self, partition: str) -> list[str]:
        return list(self.loaded[partition])

    def pick(self, micro_batch: int, *, avoid: Iterable[tuple[str, str]] = ()) -> Route:
        """Return a route for one attempt of a micro-batch.

        Each partition gets its live replica with the fewest micro-batches in
        flight, skipping the (partition, worker) pairs in `avoid` (earlier
        attempts of this micro-batch that missed their deadline) unless no other
        replica is live. Ties go round-robin by micro-batch index.
        """
        avoided = set(avoid)
        route = []
        missing = []
        for partition in self.plan.partitions:
            live = self.live(partition)
            preferred = [worker for worker in live if (partition, worker) not in avoided] or live
            if not preferred:
                missing.append(partition)
                continue
            rotation = micro_batch % len(preferred)
            ordered = preferred[rotation:] + preferred[:rotation]
            route.append(min(ordered, key=lambda worker: self._in_flight[worker]))
        if missing:
            raise NoLiveReplica(missing)
        return tuple(route)

    def begin(self, route: Route) -> None:
        self._in_flight.update(set(route))

    def end(self, route: Route, duration_s: float | None = None) -> None:
        self._in_flight.subtract(set(route))
        if duration_s is not None:
            for worker in set(route):
                self._durations[worker].append(duration_s)

    def holder(self, route: Route, partition: str) -> str:
        return route[self.plan.partitions.index(partition)]

    def report_stragglers(self, job: str, step: int) -> list[str]:
        """Log workers whose micro-batches this step took much longer than the median; reset the timings."""
        durations = {worker: statistics.median(values) for worker, values in self._durations.items() if values}
        self._durations.clear()
        if len(durations) < 2:
            return []
        overall = statistics.median(durations.values())
        slow = sorted(worker for worker, median in durations.items() if median > _STRAGGLER_FACTOR * overall)
        for worker in slow:
            log.warning(
                "worker.straggler job=%s step=%d worker=%s median_s=%.3f step_median_s=%.3f",
                job, step, worker, durations[worker], overall,
            )
        self.stragglers = set(slow)
        return slow
