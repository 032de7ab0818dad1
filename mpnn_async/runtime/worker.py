"""The partition worker daemon: consumes its partitions' queues and computes their neurons."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import os
import re
import socket
from typing import Any, Callable, Sequence

from mpnn_async.errors import ConfigError, MpnnError, TransportError
from mpnn_async.planning.naming import validate_partition_names
from mpnn_async.runtime import weights
from mpnn_async.runtime.partition import Admission, ComputeResult, PartitionJob, RejectedBlock, Send
from mpnn_async.runtime.protocol import (
    HEARTBEATS_ROUTING_KEY,
    ControlType,
    Rejection,
    assignment_routing_key,
    control,
    parse_control,
    partition_binding,
    partition_routing_key,
    replica_binding,
    replica_routing_key,
    scheduler_routing_key,
)
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport.base import Delivery, Outgoing, QueueNotFoundError, Transport
from mpnn_async.wire import SCHEDULER, BlockHeader, CodecError, MessageKind, decode_block, encode_block, is_data_frame

__all__ = ["Worker", "WorkerState", "default_worker_id"]

log = logging.getLogger(__name__)

# A consumer cancel that takes longer than this is abandoned during shutdown;
# closing the connection then returns its unacknowledged messages to the queue.
_CANCEL_TIMEOUT_S = 5.0

# A worker's own queues outlive a lost connection by this long, so a worker cut off
# for a while finds its queues again, and the queues of a dead worker go away.
_WORKER_QUEUE_EXPIRES_S = 600.0


def default_worker_id() -> str:
    """Return `<host>-<pid>` with every character that a routing key word cannot hold replaced."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{socket.gethostname()}-{os.getpid()}")[:64]


class WorkerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Worker:
    """Hosts partitions: their queues and one in-order handler per partition, all jobs alike.

    A worker started with partitions hosts them for ever. A worker started
    without any joins the pool: it waits on its assignment queue and hosts
    whatever partitions a scheduler assigns it, changing them as the pool changes.

    Each hosted partition has two queues: the shared `part.<partition>`, which
    competing workers of the partition take turns on (serving requests), and
    the worker's own `w.<worker>.<partition>`, which receives what a route sends
    to this replica (training blocks, job and step control).
    """

    def __init__(
        self,
        *,
        transport: Transport,
        store: Store,
        partitions: Sequence[str] = (),
        worker_id: str | None = None,
        prefetch: int = 256,
        max_message_bytes: int = 128 * 1024 * 1024,
        executor: concurrent.futures.Executor | None = None,
        heartbeat_s: float = 0.5,
        on_fatal: Callable[[str], None] | None = None,
        max_partitions: int = 4,
    ) -> None:
        self.transport = transport
        self.store = store
        self.partitions: tuple[str, ...] = ()
        self._fixed_partitions = tuple(partitions)
        # A pool worker (started without partitions) takes assignments from schedulers.
        self.assignable = not partitions
        self.worker_id = worker_id or default_worker_id()
        self.prefetch = prefetch
        self.max_message_bytes = max_message_bytes
        self.heartbeat_s = heartbeat_s
        # Called with a reason when the worker cannot go on (its queue was deleted).
        self.on_fatal = on_fatal
        self.fatal_reason: str | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeats_stopped = asyncio.Event()
        # partition -> [(queue, consumer tag)]
        self._hosted: dict[str, list[tuple[str, str]]] = {}
        self._assignment_tag: str | None = None
        self._assignment_lock = asyncio.Lock()
        # One lock per partition: its two queues' handlers must not interleave.
        self._partition_locks: dict[str, asyncio.Lock] = {}
        self.state = WorkerState.CREATED
        self.counters = {"received": 0, "dead_lettered": 0, "duplicates": 0, "superseded": 0}
        # jobs[job][partition]
        self._jobs: dict[str, dict[str, PartitionJob]] = {}
        # (job, partition) -> the step.apply waiting for the other replicas' gradients.
        self._pending_apply: dict[tuple[str, str], dict[str, Any]] = {}
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=max(len(partitions), max_partitions), thread_name_prefix="mpnn-compute"
        )

    def __repr__(self) -> str:
        return (
            f"<Worker {self.worker_id} partitions={list(self.partitions)} {self.state.name} "
            f"jobs={sorted(self._jobs)} received={self.counters['received']}>"
        )

    @property
    def _queues(self) -> list[str]:
        return [queue for queues in self._hosted.values() for queue, _ in queues]

    async def start(self) -> None:
        """Declare this worker's queues and start consuming them."""
        for partition in self._fixed_partitions:
            await self._host(partition)
        if self.assignable:
            queue = await self.transport.declare_queue(
                f"assign.{self.worker_id}",
                [assignment_routing_key(self.worker_id)],
                durable=False,
                expires_s=_WORKER_QUEUE_EXPIRES_S,
            )
            self._assignment_tag = await self.transport.consume(queue, self._on_assignment, prefetch=4)
        self.state = WorkerState.RUNNING
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        log.info(
            "worker.started worker=%s partitions=%s pool=%s prefetch=%d",
            self.worker_id,
            ",".join(self.partitions) or "-",
            self.assignable,
            self.prefetch,
        )

    async def _host(self, partition: str) -> None:
        """Start consuming the shared and the own queue of a partition."""
        shared = await self.transport.declare_queue(f"part.{partition}", [partition_binding(partition)], durable=True)
        own = await self.transport.declare_queue(
            f"w.{self.worker_id}.{partition}",
            [replica_binding(self.worker_id, partition)],
            durable=False,
            expires_s=_WORKER_QUEUE_EXPIRES_S,
        )
        handler = self._handler_for(partition)
        queues = []
        for queue in (own, shared):
            queues.append((queue, await self.transport.consume(queue, handler, prefetch=self.prefetch)))
        self._hosted[partition] = queues
        self.partitions = tuple(self._hosted)

    async def _unhost(self, partition: str) -> None:
        """Stop consuming a partition's queues and drop its jobs; held blocks go back to the queue."""
        for queue, tag in self._hosted.pop(partition, []):
            await self._cancel_consumer(tag)
            if queue.endswith(f"w.{self.worker_id}.{partition}"):
                with contextlib.suppress(TransportError):
                    await self.transport.delete_queue(queue)
        self.partitions = tuple(self._hosted)
        for job_name in list(self._jobs):
            job = self._jobs[job_name].pop(partition, None)
            if job is not None:
                for held in job.pending_deliveries():
                    await held.requeue()
            if not self._jobs[job_name]:
                del self._jobs[job_name]

    async def _on_assignment(self, delivery: Delivery) -> None:
        try:
            kind, payload = parse_control(delivery.body, max_size_bytes=self.max_message_bytes)
        except CodecError as error:
            await self._dead_letter(delivery, str(error.reason), str(error), "-")
            return
        wanted = [str(name) for name in payload.get("partitions", [])]
        problem = ""
        if kind is not ControlType.WORKER_ASSIGN or payload["worker"] != self.worker_id:
            problem = f"{kind} for worker {payload.get('worker')!r} reached the assignment queue of {self.worker_id!r}"
        else:
            try:
                validate_partition_names(wanted, "partitions")
            except ConfigError as error:
                problem = str(error)
        if problem:
            await self._dead_letter(delivery, str(Rejection.INVALID_CONTROL), problem, "-")
            return
        async with self._assignment_lock:
            for partition in [p for p in self.partitions if p not in wanted]:
                await self._unhost(partition)
            for partition in [p for p in wanted if p not in self._hosted]:
                await self._host(partition)
        log.info("worker.assigned worker=%s partitions=%s", self.worker_id, ",".join(self.partitions) or "-")
        await delivery.ack()
        # Tell schedulers at once instead of at the next beat.
        await self._beat()

    async def _cancel_consumer(self, tag: str) -> None:
        try:
            await asyncio.wait_for(self.transport.cancel(tag), _CANCEL_TIMEOUT_S)
        except (asyncio.TimeoutError, TransportError) as error:
            log.warning("worker.cancel_failed worker=%s tag=%s error=%r", self.worker_id, tag, error)

    async def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop consuming, let the running computation finish, requeue what is held."""
        if self.state is WorkerState.STOPPED:
            return
        self.state = WorkerState.DRAINING
        log.info("worker.stopping worker=%s", self.worker_id)
        if self._heartbeat_task is not None:
            # The loop is asked to end rather than cancelled: cancelling it inside a
            # broker round trip (its queue check) could leave that call waiting.
            self._heartbeats_stopped.set()
            done, _ = await asyncio.wait({self._heartbeat_task}, timeout=_CANCEL_TIMEOUT_S)
            if not done:
                log.warning("worker.heartbeat_stop_timeout worker=%s", self.worker_id)
                self._heartbeat_task.cancel()
        tags = [tag for queues in self._hosted.values() for _, tag in queues]
        if self._assignment_tag is not None:
            tags.append(self._assignment_tag)
        for tag in tags:
            await self._cancel_consumer(tag)
        log.debug("worker.consumers_cancelled worker=%s busy=%d", self.worker_id, self._busy)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("worker.stop_timeout worker=%s timeout_s=%.1f", self.worker_id, timeout_s)
        held = [
            delivery
            for partition_jobs in self._jobs.values()
            for job in partition_jobs.values()
            for delivery in job.pending_deliveries()
        ]
        for delivery in held:
            await delivery.requeue()
        self._jobs.clear()
        if self._own_executor:
            self._executor.shutdown(wait=True)
        self.state = WorkerState.STOPPED
        log.info("worker.stopped worker=%s requeued=%d", self.worker_id, len(held))

    async def _beat(self) -> None:
        body = control(
            ControlType.HEARTBEAT,
            worker=self.worker_id,
            partitions=list(self.partitions),
            interval_s=self.heartbeat_s,
            assignable=self.assignable,
        )
        await self.transport.publish(Outgoing(HEARTBEATS_ROUTING_KEY, body, persistent=False, mandatory=False))

    async def _heartbeat_loop(self) -> None:
        """Publish a heartbeat every `heartbeat_s`, and check that the partition queues exist.

        A deleted queue cancels its consumer on the broker without an error
        reaching aio-pika's robust consumer, so the worker would sit idle for
        ever. Finding the queue gone is fatal instead.
        """
        warned = False
        while not self._heartbeats_stopped.is_set():
            try:
                await self._beat()
                for queue in self._queues:
                    await self.transport.queue_depth(queue)
                warned = False
            except QueueNotFoundError as error:
                self._fail(f"queue deleted while consuming it: {error}")
                return
            except TransportError as error:
                if not warned:
                    log.warning("worker.heartbeat_failed worker=%s error=%s", self.worker_id, error)
                    warned = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._heartbeats_stopped.wait(), self.heartbeat_s)

    def _fail(self, reason: str) -> None:
        log.error("worker.fatal worker=%s reason=%s", self.worker_id, reason)
        self.fatal_reason = reason
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def _handler_for(self, partition: str) -> Any:
        lock = self._partition_locks.setdefault(partition, asyncio.Lock())

        async def handle(delivery: Delivery) -> None:
            self._busy += 1
            self._idle.clear()
            try:
                async with lock:
                    await self._handle(partition, delivery)
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

        return handle

    async def _handle(self, partition: str, delivery: Delivery) -> None:
        self.counters["received"] += 1
        try:
            if is_data_frame(delivery.body):
                await self._handle_block(partition, delivery)
            else:
                await self._handle_control(partition, delivery)
        except CodecError as error:
            await self._dead_letter(delivery, str(error.reason), str(error), partition)
        except RejectedBlock as error:
            await self._dead_letter(delivery, str(error.reason), error.detail, partition)
        except TransportError as error:
            # The message is fine; the broker went away while handling it, so it goes
            # back to its queue instead of the dead-letter queue. A computation whose
            # results were lost is redone after the job's rollback.
            log.warning(
                "worker.handler_interrupted worker=%s partition=%s routing_key=%s error=%s",
                self.worker_id, partition, delivery.routing_key, error,
            )
            if not delivery.is_settled:
                with contextlib.suppress(TransportError):
                    await delivery.requeue()
        except Exception as error:  # noqa: BLE001 - a worker must survive any one message
            log.error(
                "worker.handler_failed worker=%s partition=%s error=%r",
                self.worker_id,
                partition,
                error,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            await self._dead_letter(delivery, "handler_error", repr(error), partition)

    async def _dead_letter(self, delivery: Delivery, reason: str, detail: str, partition: str) -> None:
        self.counters["dead_lettered"] += 1
        log.warning(
            "message.rejected worker=%s partition=%s routing_key=%s reason=%s detail=%s",
            self.worker_id,
            partition,
            delivery.routing_key,
            reason,
            detail,
        )
        await delivery.reject(reason, detail)

    # -- data ------------------------------------------------------------------------------

    async def _handle_block(self, partition: str, delivery: Delivery) -> None:
        block = decode_block(delivery.body, max_size_bytes=self.max_message_bytes)
        header = block.header
        job = self._jobs.get(header.job, {}).get(partition)
        if job is None:
            raise RejectedBlock(Rejection.UNKNOWN_JOB, f"job {header.job!r} was not started here")
        admission = job.admit(header, block.array)
        if admission is not Admission.ACCEPT:
            counter = "duplicates" if admission is Admission.DUPLICATE else "superseded"
            self.counters[counter] += 1
            log.debug(
                "block.dropped reason=%s job=%s step=%d mb=%d layer=%d source=%s attempt=%d",
                admission.value,
                header.job,
                header.step,
                header.micro_batch,
                header.layer,
                header.source,
                header.attempt,
            )
            await delivery.ack()
            return
        ready = job.add(header, block.array, delivery)
        if header.kind is MessageKind.REPLICA_GRADIENT:
            await delivery.ack()
            await self._finish_replicated_apply(partition, job)
            return
        for orphan in job.take_orphans():
            await orphan.ack()
        pending = [ready] if ready is not None else []
        loop = asyncio.get_running_loop()
        while pending:
            key = pending.pop(0)
            result, outgoing = await loop.run_in_executor(self._executor, self._compute, job, key)
            await self.transport.publish_many(outgoing)
            for finished in result.finished_deliveries:
                await finished.ack()
            pending.extend(result.ready)

    def _compute(self, job: PartitionJob, key: Any) -> tuple[ComputeResult, list[Outgoing]]:
        # Runs in an executor thread: the matrix products and the encoding copies.
        result = job.compute(key)
        outgoing = [self._encode_send(job, send) for send in result.sends]
        for step, micro_batch, attempt in result.micro_batches_done:
            body = control(
                ControlType.MICRO_BATCH_DONE,
                job=job.job,
                partition=job.partition,
                step=step,
                micro_batch=micro_batch,
                attempt=attempt,
                worker=self.worker_id,
            )
            outgoing.append(Outgoing(scheduler_routing_key(job.job), body))
        return result, outgoing

    def _encode_send(self, job: PartitionJob, send: Send) -> Outgoing:
        header = BlockHeader(
            kind=send.kind,
            job=job.job,
            step=send.step,
            micro_batch=send.micro_batch,
            layer=send.layer,
            source=job.partition,
            destination=send.destination,
            attempt=send.attempt,
            extra={"route": send.route} if send.route else {},
        )
        if send.worker:
            routing_key = replica_routing_key(job.job, send.worker, send.destination)
        elif send.destination == SCHEDULER:
            routing_key = scheduler_routing_key(job.job)
        elif send.route:
            worker = send.route[job.plan.partitions.index(send.destination)]
            routing_key = replica_routing_key(job.job, worker, send.destination)
        else:
            routing_key = partition_routing_key(job.job, send.destination)
        # Losing an inference block loses no training work (the request times out and
        # is retried by the client), so it skips the broker's disk write.
        persistent = send.kind is not MessageKind.INFERENCE
        return Outgoing(routing_key, encode_block(header, send.array), persistent=persistent)

    # -- control ---------------------------------------------------------------------------

    async def _handle_control(self, partition: str, delivery: Delivery) -> None:
        kind, payload = parse_control(delivery.body, max_size_bytes=self.max_message_bytes)
        job_name = payload["job"]
        if kind is ControlType.JOB_START:
            await self._start_job(partition, payload)
        elif kind is ControlType.STEP_APPLY:
            await self._apply_step(partition, payload)
        elif kind is ControlType.JOB_END:
            self._pending_apply.pop((job_name, partition), None)
            partition_jobs = self._jobs.get(job_name, {})
            job = partition_jobs.pop(partition, None)
            if job is not None:
                for held in job.pending_deliveries():
                    await held.ack()
                log.info("job.ended job=%s partition=%s counters=%s", job_name, partition, job.counters)
            if not partition_jobs:
                self._jobs.pop(job_name, None)
        else:
            raise RejectedBlock(Rejection.INVALID_CONTROL, f"{kind} is not sent to partitions")
        await delivery.ack()

    async def _start_job(self, partition: str, payload: dict[str, Any]) -> None:
        job_name = payload["job"]
        generation = payload.get("generation", 0)
        current = self._jobs.get(job_name, {}).get(partition)
        if current is not None and current.generation > generation:
            log.info("job.start_stale job=%s partition=%s generation=%d", job_name, partition, generation)
            return
        replicas = tuple(str(worker) for worker in payload.get("replicas", []))
        if (
            current is not None
            and current.generation == generation
            and current.step == payload["step"]
            and current.replicas == replicas
        ):
            # A redelivered start: the state is loaded already, so only confirm it again.
            await self._publish_ready(partition, current)
            return
        if current is not None:
            # A rollback or a new replica set: the old state's held blocks will never complete.
            self._pending_apply.pop((job_name, partition), None)
            for held in current.pending_deliveries():
                await held.ack()
        loop = asyncio.get_running_loop()
        try:
            job = await loop.run_in_executor(
                self._executor, self._load_job, partition, payload
            )
        except Exception as error:  # noqa: BLE001 - the scheduler must hear of any failure
            log.error(
                "job.start_failed job=%s partition=%s error=%r", job_name, partition, error,
                exc_info=not isinstance(error, MpnnError),
            )
            await self._publish_failure(job_name, partition, str(error))
            return
        problem = self._prefetch_problem(job, payload["in_flight"])
        if problem:
            log.error("job.start_failed job=%s partition=%s error=%s", job_name, partition, problem)
            await self._publish_failure(job_name, partition, problem)
            return
        self._jobs.setdefault(job_name, {})[partition] = job
        log.info(
            "job.started job=%s partition=%s step=%d version=%d generation=%d replicas=%d",
            job_name, partition, job.step, job.version, job.generation, max(len(job.replicas), 1),
        )
        await self._publish_ready(partition, job)

    def _prefetch_problem(self, job: PartitionJob, in_flight: int) -> str:
        """Return why this worker's prefetch is too small for the job, or an empty string."""
        # TODO: count a block over the broker's max_message_bytes as its chunk count
        # (transport.chunking.chunk_count); job.start does not carry the block sizes yet.
        held = job.max_held_blocks(in_flight)
        if held < self.prefetch:
            return ""
        # NOTE: past this bound a gather could wait for a block that the broker
        # will not deliver until an unacknowledged one is settled: a deadlock.
        return (
            f"partition {job.partition!r} may hold {held} unacknowledged blocks with "
            f"job.in_flight = {in_flight}, but the worker's prefetch is "
            f"{self.prefetch}; lower job.in_flight or start the worker with a larger --prefetch"
        )

    async def _publish_ready(self, partition: str, job: PartitionJob) -> None:
        await self._publish_control(
            job.job,
            ControlType.JOB_READY,
            job=job.job,
            partition=partition,
            worker=self.worker_id,
            version=job.version,
            generation=job.generation,
            step=job.step,
        )

    async def _publish_failure(self, job_name: str, partition: str, error: str) -> None:
        await self._publish_control(
            job_name, ControlType.JOB_FAILED, job=job_name, partition=partition, error=error, worker=self.worker_id
        )

    def _load_job(self, partition: str, payload: dict[str, Any]) -> PartitionJob:
        model_store = ModelStore(self.store, payload["model"])
        return weights.load_partition_job(
            model_store,
            job=payload["job"],
            plan_id=payload["plan_id"],
            partition=partition,
            optimizer=payload["optimizer"],
            expected_step=payload["step"],
            snapshot=payload.get("snapshot", ""),
            version_number=payload.get("versions", {}).get(partition),
            generation=payload.get("generation", 0),
            replicas=tuple(str(worker) for worker in payload.get("replicas", [])),
        )

    async def _apply_step(self, partition: str, payload: dict[str, Any]) -> None:
        job_name = payload["job"]
        job = self._jobs.get(job_name, {}).get(partition)
        if job is None:
            raise RejectedBlock(Rejection.UNKNOWN_JOB, f"job {job_name!r} was not started here")
        step = payload["step"]
        if payload["generation"] != job.generation:
            log.info(
                "step.stale job=%s partition=%s step=%d generation=%d current=%d",
                job_name, partition, step, payload["generation"], job.generation,
            )
            return
        if step < job.step:
            # A redelivered command for a step already applied: report it again, change nothing.
            log.info("step.already_applied job=%s partition=%s step=%d", job_name, partition, step)
            await self._publish_step_done(job, step)
            return
        if len(job.replicas) > 1:
            await self._start_replicated_apply(partition, job, payload)
            return
        await self._run_apply(job, payload)

    async def _start_replicated_apply(self, partition: str, job: PartitionJob, payload: dict[str, Any]) -> None:
        """Send the gradients this replica holds to the others; apply once it has them all."""
        holders = [str(worker) for worker in payload.get("holders", [])]
        if len(holders) != payload["micro_batches"]:
            raise RejectedBlock(
                Rejection.INVALID_CONTROL,
                f"step.apply names {len(holders)} holders for {payload['micro_batches']} micro-batches",
            )
        sends = job.replica_sends(payload["step"], holders, self.worker_id)
        await self.transport.publish_many(self._encode_send(job, send) for send in sends)
        self._pending_apply[(job.job, partition)] = payload
        await self._finish_replicated_apply(partition, job)

    async def _finish_replicated_apply(self, partition: str, job: PartitionJob) -> None:
        payload = self._pending_apply.get((job.job, partition))
        if payload is None or payload["step"] != job.step or job.missing_micro_batches(payload["micro_batches"]):
            return
        del self._pending_apply[(job.job, partition)]
        await self._run_apply(job, payload)

    async def _run_apply(self, job: PartitionJob, payload: dict[str, Any]) -> None:
        step = payload["step"]
        replicas = payload.get("replicas") or [self.worker_id]
        # Only the first replica writes the partition to the store.
        persist = payload["persist"] and replicas[0] == self.worker_id
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._executor, self._apply_and_persist, job, step, payload["micro_batches"], persist
            )
        except (MpnnError, ValueError) as error:
            log.error("step.failed job=%s partition=%s step=%d error=%s", job.job, job.partition, step, error)
            await self._publish_failure(job.job, job.partition, str(error))
            return
        await self._publish_step_done(job, step)

    async def _publish_step_done(self, job: PartitionJob, step: int) -> None:
        await self._publish_control(
            job.job,
            ControlType.STEP_DONE,
            job=job.job,
            partition=job.partition,
            step=step,
            version=job.version,
            generation=job.generation,
            worker=self.worker_id,
        )

    def _apply_and_persist(
        self, job: PartitionJob, step: int, micro_batches: int, persist: bool
    ) -> None:
        job.apply_step(step, micro_batches)
        if persist:
            model_store = ModelStore(self.store, job.model_name)
            if len(job.replicas) > 1:
                # Another replica may have written the partition before this one became
                # the first replica; the scheduler lets one replica write at a time.
                latest = self.store.latest_version(model_store.partition_key(job.partition))
                job.version = max(job.version, latest or 0)
            weights.save_partition_job(model_store, job)

    async def _publish_control(self, job_name: str, kind: ControlType, **payload: Any) -> None:
        await self.transport.publish(
            Outgoing(scheduler_routing_key(job_name), control(kind, **payload))
        )
