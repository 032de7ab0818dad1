"""The worker pool: assigning a plan's partitions to workers that joined without any.

A worker started without `--partition` sends heartbeats marked `assignable`
and waits on its assignment queue. A scheduler that needs workers for its
plan assigns the idle ones: first one worker to each partition that has none,
then every further idle worker as a replica of the partition with the fewest
workers. Workers keep what they host, so an assignment never moves work that
is running. A worker hosting only partitions that a re-plan removed counts as idle.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

from mpnn_async.runtime.liveness import Liveness
from mpnn_async.runtime.protocol import ControlType, assignment_routing_key, control
from mpnn_async.transport.base import Outgoing, Transport

__all__ = ["assign_partitions", "publish_assignments", "release_pool_workers"]

log = logging.getLogger(__name__)


def assign_partitions(
    partitions: Sequence[str],
    hosts: Mapping[str, Sequence[str]],
    assignable: Iterable[str],
    *,
    reclaim: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Return the new partition list of every pool worker whose assignment changes.

    `hosts` maps each live worker to the partitions it hosts; `assignable` names
    the live pool workers. Partitions in `reclaim` are no longer needed, so a
    pool worker hosting only those is free again.
    """
    needed = list(partitions)
    reclaimed = set(reclaim)
    pool = sorted(set(assignable))
    coverage = {partition: 0 for partition in needed}
    idle = []
    for worker in sorted(hosts):
        hosted = [name for name in hosts[worker] if name not in reclaimed]
        if worker in pool and not hosted:
            idle.append(worker)
            continue
        for name in hosted:
            if name in coverage:
                coverage[name] += 1
    changes: dict[str, list[str]] = {}
    for worker in idle:
        target = min(needed, key=lambda name: (coverage[name], needed.index(name)))
        coverage[target] += 1
        changes[worker] = [target]
    uncovered = [name for name in needed if coverage[name] == 0]
    if uncovered:
        # Too few workers: pool workers of this plan host more than one partition.
        sharing = sorted(
            (worker for worker in pool if worker not in changes and any(n in coverage for n in hosts.get(worker, ()))),
            key=lambda worker: (len(hosts[worker]), worker),
        )
        for index, name in enumerate(uncovered):
            if not sharing:
                break
            worker = sharing[index % len(sharing)]
            current = changes.get(worker, [n for n in hosts[worker] if n not in reclaimed])
            changes[worker] = current + [name]
    return changes


async def publish_assignments(
    transport: Transport, plan_partitions: Sequence[str], liveness: Liveness, *, job: str, reclaim: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Assign idle pool workers to the plan's partitions; return what was sent."""
    hosts = liveness.live_workers()
    live_pool = [worker for worker in liveness.assignable if worker in hosts]
    changes = assign_partitions(plan_partitions, hosts, live_pool, reclaim=reclaim)
    for worker, partitions in sorted(changes.items()):
        log.info("pool.assign job=%s worker=%s partitions=%s", job, worker, ",".join(partitions))
        body = control(ControlType.WORKER_ASSIGN, worker=worker, partitions=partitions)
        await transport.publish(Outgoing(assignment_routing_key(worker), body, persistent=False))
    return changes


async def release_pool_workers(
    transport: Transport, plan_partitions: Sequence[str], liveness: Liveness, *, job: str
) -> list[str]:
    """Free the pool workers that host only partitions of this plan (the job is over); return them.

    A worker keeps partitions of another plan it also hosts, since another job may use them.
    """
    plan_names = set(plan_partitions)
    hosts = liveness.live_workers()
    released = sorted(
        worker
        for worker in liveness.assignable
        if hosts.get(worker) and set(hosts[worker]) <= plan_names
    )
    for worker in released:
        log.info("pool.release job=%s worker=%s", job, worker)
        body = control(ControlType.WORKER_ASSIGN, worker=worker, partitions=[])
        await transport.publish(Outgoing(assignment_routing_key(worker), body, persistent=False))
    return released
