"""The scheduler's side of the message flow for one job.

`JobChannel` owns the job's reply queue and heartbeat subscription, sends
input blocks, output gradients and control messages to the partitions'
replicas, and turns what comes back (output slices, `micro_batch.done`,
`step.done`, `job.ready`) into awaitable results. Every wait is bounded: a
wait for one micro-batch raises `RouteFailed` when its deadline passes or a
worker of its route stops sending heartbeats, so the caller can retry the
micro-batch on another route; the other waits raise `RecoveryNeeded`, so the
caller can roll the job back instead of hanging.

Every reply names the attempt or generation it belongs to. A reply to an
attempt that was retried, or from before a rollback, is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Iterable

import numpy as np

from mpnn_async.errors import FatalError, MpnnError
from mpnn_async.planning import Plan
from mpnn_async.runtime.gather import Gather
from mpnn_async.runtime.liveness import Liveness
from mpnn_async.runtime.protocol import (
    HEARTBEATS_ROUTING_KEY,
    ControlType,
    attempt_floor,
    control,
    parse_control,
    replica_routing_key,
    scheduler_routing_key,
)
from mpnn_async.runtime.routing import ReplicaSet, Route
from mpnn_async.runtime.waiters import Waiters
from mpnn_async.transport.base import Delivery, Outgoing, Transport
from mpnn_async.wire import (
    SCHEDULER,
    BlockHeader,
    CodecError,
    MessageKind,
    decode_block,
    encode_block,
    is_data_frame,
)

__all__ = ["JobChannel", "JobFailedError", "NoLiveWorkerError", "RecoveryNeeded", "RouteFailed", "SCHEDULER"]

log = logging.getLogger(__name__)

# How often a wait wakes up to check heartbeats and failures.
_POLL_S = 0.2


class JobFailedError(FatalError):
    """A partition reported that it cannot go on, or the job could not recover."""


class NoLiveWorkerError(JobFailedError):
    """Some partitions of the plan have no worker with current heartbeats."""

    def __init__(self, message: str, partitions: list[str]) -> None:
        super().__init__(message)
        self.partitions = partitions


class RecoveryNeeded(MpnnError):
    """A wait cannot finish (deadline passed, or a partition lost its workers)."""


class RouteFailed(RecoveryNeeded):
    """One attempt of a micro-batch cannot finish: a worker of its route is lost or it is late."""

    def __init__(self, message: str, *, workers: Iterable[str], lost: bool) -> None:
        super().__init__(message)
        self.workers = set(workers)
        # True when heartbeats stopped; False when the deadline passed with every worker alive.
        self.lost = lost


class _UnexpectedReply(MpnnError):
    reason = "unexpected_block"


class JobChannel:
    """Queues, sends and bounded waits of one job on the scheduler's side."""

    def __init__(
        self,
        *,
        job: str,
        plan: Plan,
        transport: Transport,
        heartbeat_timeout_s: float,
        max_message_bytes: int,
    ) -> None:
        self.job = job
        self.plan = plan
        self.spec = plan.spec
        self.transport = transport
        self.max_message_bytes = max_message_bytes
        self.liveness = Liveness(timeout_s=heartbeat_timeout_s)
        self.replicas = ReplicaSet(plan, self.liveness)
        self.generation = 0
        self._next_attempt = 0
        self._failure: asyncio.Future[None] | None = None
        self._waiters = Waiters()
        self._outputs: dict[tuple[Any, ...], Gather] = {}
        self._reported: dict[tuple[Any, ...], dict[Any, dict[str, Any]]] = {}
        self._tags: list[str] = []
        self._queues: list[str] = []
        # Plan tables received in `job.replan` messages, oldest first.
        self.replans: list[dict[str, Any]] = []
        # Set on every replica report, so waits for all replicas wake up at once.
        self._replica_reported = asyncio.Event()
        # Workers that could not load the job (their error by worker id); left out of the job.
        self.rejected: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<JobChannel {self.job} generation={self.generation} {self.replicas!r}>"

    @property
    def workers(self) -> dict[str, str]:
        """Partition -> the first worker that serves it (for progress records)."""
        return {partition: workers[0] for partition, workers in self.replicas.loaded.items() if workers}

    async def open(self) -> None:
        self._failure = asyncio.get_running_loop().create_future()
        replies = await self.transport.declare_queue(
            f"sched.{self.job}", [scheduler_routing_key(self.job)], durable=True
        )
        beats = await self.transport.declare_queue(
            f"beats.{self.job}", [HEARTBEATS_ROUTING_KEY], durable=False, exclusive=True, auto_delete=True
        )
        self._queues = [replies, beats]
        self._tags.append(await self.transport.consume(replies, self._on_message, prefetch=512))
        self._tags.append(await self.transport.consume(beats, self._on_heartbeat, prefetch=64))

    async def close(self) -> None:
        for tag in self._tags:
            await self.transport.cancel(tag)
        for queue in self._queues:
            await self.transport.delete_queue(queue)
        self._tags.clear()
        self._queues.clear()

    def use_plan(self, plan: Plan) -> None:
        """Switch to another plan of the same model (at a step boundary, before a new generation)."""
        self.plan = plan
        self.replicas = ReplicaSet(plan, self.liveness)

    def set_generation(self, generation: int) -> None:
        self.generation = generation
        self._next_attempt = attempt_floor(generation)

    def new_attempt(self) -> int:
        """Return an attempt number never used before in this generation."""
        attempt = self._next_attempt
        self._next_attempt += 1
        return attempt

    # -- sending ---------------------------------------------------------------------------

    def _to_replica(self, worker: str, partition: str, body: bytes) -> Outgoing:
        return Outgoing(replica_routing_key(self.job, worker, partition), body)

    async def publish_job_end(self) -> None:
        body = control(ControlType.JOB_END, job=self.job)
        await self.transport.publish_many(
            self._to_replica(worker, partition, body)
            for partition, workers in self.replicas.loaded.items()
            for worker in workers
        )

    def block(
        self,
        kind: MessageKind,
        step: int,
        micro_batch: int,
        layer: int,
        destination: str,
        array: np.ndarray,
        *,
        attempt: int,
        route: Route,
    ) -> Outgoing:
        header = BlockHeader(
            kind=kind,
            job=self.job,
            step=step,
            micro_batch=micro_batch,
            layer=layer,
            source=SCHEDULER,
            destination=destination,
            attempt=attempt,
            extra={"route": route},
        )
        worker = self.replicas.holder(route, destination)
        return Outgoing(replica_routing_key(self.job, worker, destination), encode_block(header, array))

    async def forward(
        self,
        kind: MessageKind,
        step: int,
        micro_batch: int,
        inputs: np.ndarray,
        *,
        attempt: int,
        route: Route,
        timeout_s: float,
    ) -> np.ndarray:
        """Send one input block through the network on `route` and return the assembled output."""
        depth = self.spec.depth
        key = ("output", attempt, kind, step, micro_batch)
        self._outputs[key] = Gather(expected=tuple(self.plan.owners(depth)))
        inputs = np.ascontiguousarray(inputs, dtype=self.spec.np_dtype)
        try:
            await self.transport.publish_many(
                self.block(kind, step, micro_batch, 0, owner, inputs, attempt=attempt, route=route)
                for owner in self.plan.owners(1)
            )
            what = f"the output of step {step} micro-batch {micro_batch}"
            gather = await self.wait(key, timeout_s, what, route=route)
        finally:
            self._outputs.pop(key, None)
        outputs = np.empty((inputs.shape[0], self.spec.width(depth)), dtype=self.spec.np_dtype)
        for owner, block in gather.blocks.items():
            outputs[:, self.plan.neurons(owner, depth)] = block
        return outputs

    async def send_output_gradient(
        self, step: int, micro_batch: int, gradient: np.ndarray, *, attempt: int, route: Route
    ) -> None:
        depth = self.spec.depth
        await self.transport.publish_many(
            self.block(
                MessageKind.GRADIENT,
                step,
                micro_batch,
                depth,
                owner,
                np.ascontiguousarray(gradient[:, self.plan.neurons(owner, depth)]),
                attempt=attempt,
                route=route,
            )
            for owner in self.plan.owners(depth)
        )

    # -- waiting ---------------------------------------------------------------------------

    async def wait(
        self,
        key: tuple[Any, ...],
        timeout_s: float,
        what: str,
        *,
        route: Route | None = None,
        recoverable: bool = True,
    ) -> Any:
        """Wait for the result under `key`.

        Raises JobFailedError if a partition reported failure. With a `route`,
        raises RouteFailed when a worker of the route is lost or the deadline
        passes; without one, RecoveryNeeded on timeout (or JobFailedError if
        not `recoverable`).
        """
        future = self._waiters.get(key)
        assert self._failure is not None
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                done, _ = await asyncio.wait({future, self._failure}, timeout=_POLL_S, return_when=asyncio.FIRST_COMPLETED)
                if self._failure in done:
                    self._failure.result()
                if future in done:
                    return future.result()
                self._check_duplicates()
                if route is not None:
                    lost = sorted({worker for worker in route if self.liveness.is_lost(worker)})
                    if lost:
                        raise RouteFailed(
                            f"no heartbeat for {self.liveness.timeout_s:.1f} s from workers {lost} "
                            f"while waiting for {what}",
                            workers=lost,
                            lost=True,
                        )
                if time.monotonic() > deadline:
                    problem = f"timed out after {timeout_s:.1f} s waiting for {what}{self._missing(key)}"
                    if route is not None:
                        raise RouteFailed(problem, workers=route, lost=False)
                    if recoverable:
                        raise RecoveryNeeded(problem)
                    raise JobFailedError(f"job {self.job}: {problem}")
        finally:
            self._waiters.discard(key)
            self._reported.pop(key, None)

    def _missing(self, key: tuple[Any, ...]) -> str:
        if key[0] not in ("ready", "step_done"):
            return ""
        reported = {pair[0] for pair in self._reported.get(key, {})}
        missing = sorted(set(self.plan.partitions) - reported)
        return f" (no reply from partitions {missing}; is a worker running for each?)"

    async def _wait_for_replicas(
        self, key: tuple[Any, ...], expected: set[tuple[str, str]], timeout_s: float, what: str, *, required: set[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Wait until every expected (partition, worker) reported under `key`, or its worker is lost.

        Lost workers are dropped from the replica set. Raises RecoveryNeeded on
        timeout, or when a worker in `required`, or every worker of a partition, is lost.
        """
        assert self._failure is not None
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self._failure.done():
                    self._failure.result()
                self._check_duplicates()
                reported = self._reported.get(key, {})
                refused = {pair for pair in expected if pair[1] in self.rejected}
                if refused:
                    expected -= refused
                    left = set(self.plan.partitions) - {partition for partition, _ in expected}
                    if left:
                        errors = "; ".join(f"{worker}: {self.rejected[worker]}" for _, worker in sorted(refused))
                        raise JobFailedError(f"job {self.job}: no worker could load partitions {sorted(left)} ({errors})")
                lost = {pair for pair in expected if pair not in reported and self.liveness.is_lost(pair[1])}
                for partition, worker in lost:
                    log.warning("replica.lost job=%s partition=%s worker=%s while waiting for %s", self.job, partition, worker, what)
                    self.replicas.drop(worker)
                expected -= lost
                if lost & required:
                    raise RecoveryNeeded(f"workers {sorted(w for _, w in lost)} were lost while waiting for {what}")
                left = set(self.plan.partitions) - {partition for partition, _ in expected}
                if left:
                    raise RecoveryNeeded(f"partitions {sorted(left)} lost every worker while waiting for {what}")
                if expected <= set(reported):
                    return {pair: reported[pair] for pair in expected}
                if time.monotonic() > deadline:
                    missing = sorted(expected - set(reported))
                    raise RecoveryNeeded(f"timed out after {timeout_s:.1f} s waiting for {what} from {missing}")
                self._replica_reported.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._replica_reported.wait(), _POLL_S)
        finally:
            self._reported.pop(key, None)

    async def start_partitions(
        self,
        *,
        workers: dict[str, list[str]],
        step: int,
        versions: dict[str, int],
        in_flight: int,
        optimizer: dict[str, Any],
        model: str,
        timeout_s: float,
        plan_id: str | None = None,
    ) -> None:
        """Make every given replica load its partition's checkpoint version; wait until all have."""
        messages: list[Outgoing] = []
        for partition, replicas in workers.items():
            body = control(
                ControlType.JOB_START,
                job=self.job,
                plan_id=plan_id or self.plan.plan_id,
                model=model,
                optimizer=optimizer,
                step=step,
                in_flight=in_flight,
                generation=self.generation,
                versions=versions,
                replicas=list(replicas),
            )
            messages.extend(self._to_replica(worker, partition, body) for worker in replicas)
        await self.transport.publish_many(messages)
        expected = {(partition, worker) for partition, replicas in workers.items() for worker in replicas}
        ready = await self._wait_for_replicas(
            ("ready", self.generation), expected, timeout_s, "every replica to load its weights", required=set()
        )
        self.replicas.reset({p: [w for w in replicas if (p, w) in ready] for p, replicas in workers.items()})

    async def apply_step(
        self, *, step: int, micro_batches: int, persist: bool, holders: dict[str, list[str]], timeout_s: float
    ) -> dict[str, int]:
        """Command the optimizer step on every replica; return each partition's store version after it."""
        messages: list[Outgoing] = []
        writers: set[tuple[str, str]] = set()
        for partition in self.plan.partitions:
            replicas = self.replicas.replicas(partition)
            writers.add((partition, replicas[0]))
            body = control(
                ControlType.STEP_APPLY,
                job=self.job,
                step=step,
                micro_batches=micro_batches,
                persist=persist,
                generation=self.generation,
                holders=holders[partition],
                replicas=replicas,
            )
            messages.extend(self._to_replica(worker, partition, body) for worker in replicas)
        await self.transport.publish_many(messages)
        expected = {(p, w) for p, replicas in self.replicas.loaded.items() for w in replicas}
        # The other replicas of a partition wait for the gradients that a holder sends
        # them, so losing a holder (or the writer of a persisted step) ends the wait at once.
        holder_pairs = {(p, w) for p, workers in holders.items() if len(set(self.replicas.loaded[p])) > 1 for w in workers}
        reports = await self._wait_for_replicas(
            ("step_done", self.generation, step),
            expected,
            timeout_s,
            f"step {step} to be applied",
            required=holder_pairs | (writers if persist else set()),
        )
        return {partition: int(reports[(partition, worker)]["version"]) for partition, worker in writers}

    async def wait_for_live_workers(self, timeout_s: float) -> dict[str, list[str]]:
        """Wait until every partition has a worker whose heartbeats are current; return them."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_duplicates()
            hosts = self.live_hosts()
            missing = [partition for partition in self.plan.partitions if not hosts[partition]]
            if not missing:
                return hosts
            if time.monotonic() > deadline:
                raise NoLiveWorkerError(
                    f"job {self.job}: partitions {missing} have had no live worker for {timeout_s:.0f} s; "
                    "start `mpnn worker --partition NAME` for each, or pool workers (`mpnn worker` "
                    "without --partition) for the scheduler to assign",
                    missing,
                )
            await asyncio.sleep(_POLL_S)

    def live_hosts(self) -> dict[str, list[str]]:
        """Return the live workers that host each partition of the plan, sorted by id."""
        hosts: dict[str, list[str]] = {partition: [] for partition in self.plan.partitions}
        for worker, partitions in sorted(self.liveness.live_workers().items()):
            if worker in self.rejected:
                continue
            for partition in partitions:
                if partition in hosts:
                    hosts[partition].append(worker)
        return hosts

    def _check_duplicates(self) -> None:
        if self.liveness.duplicates:
            names = sorted(self.liveness.duplicates)
            raise JobFailedError(
                f"job {self.job}: two worker processes send heartbeats as {names}; a route cannot tell "
                "them apart, so give each worker a unique --worker-id (or leave it out)"
            )

    def forget_generation(self) -> None:
        """Drop every pending wait and gather of the current generation (before a rollback)."""
        self._waiters.cancel_all()
        self._outputs.clear()
        self._reported.clear()

    # -- receiving -------------------------------------------------------------------------

    async def _on_heartbeat(self, delivery: Delivery) -> None:
        try:
            kind, payload = parse_control(delivery.body, max_size_bytes=self.max_message_bytes)
            if kind is ControlType.HEARTBEAT:
                self.liveness.record(
                    payload["worker"],
                    [str(p) for p in payload["partitions"]],
                    assignable=payload.get("assignable", False),
                    instance=payload.get("instance", ""),
                )
        except CodecError as error:
            log.warning("heartbeat.rejected job=%s detail=%s", self.job, error)
        await delivery.ack()

    async def _on_message(self, delivery: Delivery) -> None:
        try:
            if is_data_frame(delivery.body):
                self._on_block(delivery.body)
            else:
                kind, payload = parse_control(delivery.body, max_size_bytes=self.max_message_bytes)
                self._on_control(kind, payload)
        except (CodecError, _UnexpectedReply) as error:
            reason = str(getattr(error, "reason", "unexpected_block"))
            log.warning("message.rejected job=%s reason=%s detail=%s", self.job, reason, error)
            await delivery.reject(reason, str(error))
            return
        await delivery.ack()

    def _on_block(self, body: bytes) -> None:
        block = decode_block(body, max_size_bytes=self.max_message_bytes)
        header, array = block.header, block.array
        depth = self.spec.depth
        if header.job != self.job or header.destination != SCHEDULER:
            raise _UnexpectedReply(f"block for {header.job}/{header.destination} reached the scheduler")
        if header.kind is MessageKind.GRADIENT or header.layer != depth:
            raise _UnexpectedReply(f"the scheduler only takes layer-{depth} activations")
        if header.source not in self.plan.owners(depth):
            raise _UnexpectedReply(f"{header.source!r} owns no neuron of layer {depth}")
        columns = len(self.plan.neurons(header.source, depth))
        if array.ndim != 2 or array.shape[1] != columns or array.dtype != self.spec.np_dtype:
            raise _UnexpectedReply(f"output block of shape {array.shape}, expected (rows, {columns})")
        key = ("output", header.attempt, header.kind, header.step, header.micro_batch)
        gather = self._outputs.get(key)
        # Late blocks of a finished micro-batch or an older generation are dropped here.
        if gather is None or header.source in gather.blocks:
            return
        gather.add(header.source, array)
        if gather.is_complete:
            self._waiters.resolve(key, gather)

    def _on_control(self, kind: ControlType, payload: dict[str, Any]) -> None:
        if payload.get("job") != self.job:
            raise _UnexpectedReply(f"control message of job {payload.get('job')!r}")
        partition = payload.get("partition", "")
        if kind is ControlType.JOB_READY:
            self._report_replica(("ready", payload["generation"]), partition, payload)
        elif kind is ControlType.STEP_DONE:
            self._report_replica(("step_done", payload["generation"], payload["step"]), partition, payload)
        elif kind is ControlType.MICRO_BATCH_DONE:
            self._report_micro_batch(partition, payload)
        elif kind is ControlType.JOB_REPLAN:
            log.info("job.replan_requested job=%s", self.job)
            self.replans.append(payload["plan"])
        elif kind is ControlType.JOB_FAILED:
            worker = payload.get("worker", "")
            if payload.get("during") == "start" and worker:
                # A worker that cannot load the job (a missing store mount, a small prefetch)
                # is left out. The job fails only if no other worker serves its partition.
                log.error(
                    "replica.rejected job=%s partition=%s worker=%s error=%s",
                    self.job, partition, worker, payload["error"],
                )
                self.rejected[worker] = payload["error"]
                self._replica_reported.set()
                return
            log.error(
                "job.partition_failed job=%s partition=%s worker=%s error=%s",
                self.job, partition, worker or "-", payload["error"],
            )
            if self._failure is not None and not self._failure.done():
                self._failure.set_exception(JobFailedError(f"partition {partition!r} failed: {payload['error']}"))
        else:
            raise _UnexpectedReply(f"{kind} is not sent to the scheduler")

    def _report_replica(self, key: tuple[Any, ...], partition: str, payload: dict[str, Any]) -> None:
        if partition not in self.plan.partitions:
            raise _UnexpectedReply(f"{partition!r} is not a partition of the job's plan")
        if key[1] != self.generation:
            return
        self._reported.setdefault(key, {})[(partition, payload["worker"])] = payload
        self._replica_reported.set()

    def _report_micro_batch(self, partition: str, payload: dict[str, Any]) -> None:
        expected = set(self.plan.owners(1))
        if partition not in expected:
            raise _UnexpectedReply(f"{partition!r} owns no neuron of layer 1, so it does not report micro-batches")
        key = ("mb_done", payload["attempt"], payload["step"], payload["micro_batch"])
        if payload["attempt"] < attempt_floor(self.generation):
            return
        reported = self._reported.setdefault(key, {})
        reported[partition] = payload
        if set(reported) >= expected:
            self._waiters.resolve(key, dict(reported))
