"""The partition worker daemon: consumes its partitions' queues and computes their neurons."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import os
import socket
from typing import Any, Callable, Sequence

from mpnn_async.errors import MpnnError, TransportError
from mpnn_async.runtime import weights
from mpnn_async.runtime.partition import Admission, ComputeResult, PartitionJob, RejectedBlock, Send
from mpnn_async.runtime.protocol import (
    HEARTBEATS_ROUTING_KEY,
    ControlType,
    Rejection,
    control,
    parse_control,
    partition_binding,
    partition_routing_key,
    scheduler_routing_key,
)
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport.base import Delivery, Outgoing, QueueNotFoundError, Transport
from mpnn_async.wire import BlockHeader, CodecError, MessageKind, decode_block, encode_block, is_data_frame

__all__ = ["Worker", "WorkerState"]

log = logging.getLogger(__name__)

# A consumer cancel that takes longer than this is abandoned during shutdown;
# closing the connection then returns its unacknowledged messages to the queue.
_CANCEL_TIMEOUT_S = 5.0


class WorkerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Worker:
    """Hosts partitions: one queue and one in-order handler per partition, all jobs alike."""

    def __init__(
        self,
        *,
        transport: Transport,
        store: Store,
        partitions: Sequence[str],
        worker_id: str | None = None,
        prefetch: int = 256,
        max_message_bytes: int = 128 * 1024 * 1024,
        executor: concurrent.futures.Executor | None = None,
        heartbeat_s: float = 1.0,
        on_fatal: Callable[[str], None] | None = None,
        optimizer_state_dir: str = "",
    ) -> None:
        if not partitions:
            raise ValueError("a worker needs at least one partition")
        self.transport = transport
        self.store = store
        self.partitions = tuple(partitions)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.prefetch = prefetch
        self.max_message_bytes = max_message_bytes
        self.heartbeat_s = heartbeat_s
        # Where partitions keep their optimizer state in files; empty keeps it in RAM.
        self.optimizer_state_dir = optimizer_state_dir
        # Called with a reason when the worker cannot go on (its queue was deleted).
        self.on_fatal = on_fatal
        self.fatal_reason: str | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeats_stopped = asyncio.Event()
        self._queues: list[str] = []
        self.state = WorkerState.CREATED
        self.counters = {"received": 0, "dead_lettered": 0, "duplicates": 0, "superseded": 0}
        # jobs[job][partition]
        self._jobs: dict[str, dict[str, PartitionJob]] = {}
        self._consumer_tags: list[str] = []
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.partitions), thread_name_prefix="mpnn-compute"
        )

    def __repr__(self) -> str:
        return (
            f"<Worker {self.worker_id} partitions={list(self.partitions)} {self.state.name} "
            f"jobs={sorted(self._jobs)} received={self.counters['received']}>"
        )

    async def start(self) -> None:
        """Declare this worker's partition queues and start consuming them."""
        for partition in self.partitions:
            queue = await self.transport.declare_queue(
                f"part.{partition}", [partition_binding(partition)], durable=True
            )
            tag = await self.transport.consume(
                queue, self._handler_for(partition), prefetch=self.prefetch
            )
            self._consumer_tags.append(tag)
            self._queues.append(queue)
        self.state = WorkerState.RUNNING
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        log.info(
            "worker.started worker=%s partitions=%s prefetch=%d",
            self.worker_id,
            ",".join(self.partitions),
            self.prefetch,
        )

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
        for tag in self._consumer_tags:
            try:
                await asyncio.wait_for(self.transport.cancel(tag), _CANCEL_TIMEOUT_S)
            except (asyncio.TimeoutError, TransportError) as error:
                log.warning("worker.cancel_failed worker=%s tag=%s error=%r", self.worker_id, tag, error)
        self._consumer_tags.clear()
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

    async def _heartbeat_loop(self) -> None:
        """Publish a heartbeat every `heartbeat_s`, and check that the partition queues exist.

        A deleted queue cancels its consumer on the broker without an error
        reaching aio-pika's robust consumer, so the worker would sit idle for
        ever. Finding the queue gone is fatal instead.
        """
        body = control(
            ControlType.HEARTBEAT,
            worker=self.worker_id,
            partitions=list(self.partitions),
            interval_s=self.heartbeat_s,
        )
        warned = False
        while not self._heartbeats_stopped.is_set():
            try:
                await self.transport.publish(
                    Outgoing(HEARTBEATS_ROUTING_KEY, body, persistent=False, mandatory=False)
                )
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
        async def handle(delivery: Delivery) -> None:
            self._busy += 1
            self._idle.clear()
            try:
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
        )
        if send.destination == "scheduler":
            routing_key = scheduler_routing_key(job.job)
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
        if current is not None and current.generation == generation:
            # A redelivered start: the state is loaded already, so only confirm it again.
            await self._publish_ready(partition, current)
            return
        if current is not None:
            # A rollback: the blocks held by the old generation will never complete.
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
            await self._publish_control(
                job_name, ControlType.JOB_FAILED, job=job_name, partition=partition, error=str(error)
            )
            return
        problem = self._prefetch_problem(job, payload["in_flight"])
        if problem:
            log.error("job.start_failed job=%s partition=%s error=%s", job_name, partition, problem)
            await self._publish_control(
                job_name, ControlType.JOB_FAILED, job=job_name, partition=partition, error=problem
            )
            return
        self._jobs.setdefault(job_name, {})[partition] = job
        log.info(
            "job.started job=%s partition=%s step=%d version=%d generation=%d",
            job_name, partition, job.step, job.version, job.generation,
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
            optimizer_state_dir=self.optimizer_state_dir,
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
        else:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(
                    self._executor,
                    self._apply_and_persist,
                    job,
                    step,
                    payload["micro_batches"],
                    payload["persist"],
                )
            except (MpnnError, ValueError) as error:
                log.error("step.failed job=%s partition=%s step=%d error=%s", job_name, partition, step, error)
                await self._publish_control(
                    job_name, ControlType.JOB_FAILED, job=job_name, partition=partition, error=str(error)
                )
                return
        await self._publish_control(
            job_name,
            ControlType.STEP_DONE,
            job=job_name,
            partition=partition,
            step=step,
            version=job.version,
            generation=job.generation,
        )

    def _apply_and_persist(
        self, job: PartitionJob, step: int, micro_batches: int, persist: bool
    ) -> None:
        job.apply_step(step, micro_batches)
        if persist:
            weights.save_partition_job(ModelStore(self.store, job.model_name), job)

    async def _publish_control(self, job_name: str, kind: ControlType, **payload: Any) -> None:
        await self.transport.publish(
            Outgoing(scheduler_routing_key(job_name), control(kind, **payload))
        )
