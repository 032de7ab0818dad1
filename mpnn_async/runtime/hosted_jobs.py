"""The jobs a worker hosts: their blocks, their control messages and their optimizer steps.

`HostedJobs` holds one `PartitionJob` per (job, partition) that this worker
serves. The `Worker` daemon owns the queues and hands each delivery here; the
numeric work runs in the worker's executor, one computation at a time per
partition.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from mpnn_async.errors import MpnnError
from mpnn_async.runtime import weights
from mpnn_async.runtime.partition import Admission, ComputeResult, PartitionJob, RejectedBlock, Send
from mpnn_async.runtime.protocol import (
    ControlType,
    Rejection,
    control,
    parse_control,
    partition_routing_key,
    replica_routing_key,
    scheduler_routing_key,
)
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport.base import Delivery, Outgoing, Transport, UnroutableError
from mpnn_async.wire import SCHEDULER, BlockHeader, MessageKind, decode_block, encode_block

__all__ = ["HostedJobs"]

log = logging.getLogger("mpnn_async.runtime.worker")


class HostedJobs:
    """The partition jobs of one worker, keyed by job and partition."""

    def __init__(
        self,
        *,
        transport: Transport,
        store: Store,
        executor: concurrent.futures.Executor,
        worker_id: str,
        prefetch: int,
        max_message_bytes: int,
        counters: dict[str, int],
        optimizer_state_dir: str = "",
    ) -> None:
        self.transport = transport
        self.store = store
        self._executor = executor
        self.worker_id = worker_id
        self.prefetch = prefetch
        self.max_message_bytes = max_message_bytes
        self.counters = counters
        # Where partitions keep their optimizer state in files; empty keeps it in RAM.
        self.optimizer_state_dir = optimizer_state_dir
        # jobs[job][partition]
        self._jobs: dict[str, dict[str, PartitionJob]] = {}
        # (job, partition) -> the step.apply waiting for the other replicas' gradients.
        self._pending_apply: dict[tuple[str, str], dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<HostedJobs {self.worker_id} jobs={sorted(self._jobs)}>"

    def names(self) -> list[str]:
        return sorted(self._jobs)

    def held_deliveries(self) -> list[Delivery]:
        """Deliveries held in incomplete gathers of every job (to requeue on shutdown)."""
        return [
            delivery
            for partition_jobs in self._jobs.values()
            for job in partition_jobs.values()
            for delivery in job.pending_deliveries()
        ]

    def clear(self) -> None:
        self._jobs.clear()
        self._pending_apply.clear()

    async def drop_partition(self, partition: str) -> None:
        """Forget every job's state of a partition; its held blocks go back to their queue."""
        for job_name in list(self._jobs):
            job = self._jobs[job_name].pop(partition, None)
            self._pending_apply.pop((job_name, partition), None)
            if job is not None:
                for held in job.pending_deliveries():
                    await held.requeue()
            if not self._jobs[job_name]:
                del self._jobs[job_name]

    # -- data ------------------------------------------------------------------------------

    async def handle_block(self, partition: str, delivery: Delivery) -> None:
        # In place: the delivery keeps the body until the block's computation is acknowledged,
        # and PartitionJob only reads received arrays, so a copy would double their memory.
        block = decode_block(delivery.body, max_size_bytes=self.max_message_bytes, copy=False)
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
            try:
                await self.transport.publish_many(outgoing)
            except UnroutableError as error:
                # The route names a replica whose queue is gone (it left the job). Its
                # attempt cannot finish, so the scheduler retries the micro-batch elsewhere.
                log.warning(
                    "block.unroutable job=%s partition=%s key=%s error=%s", job.job, job.partition, key, error
                )
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

    async def handle_control(self, partition: str, delivery: Delivery) -> None:
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
            # NOTE: `current` keeps its weights and gradients until the new state has loaded,
            # so a worker needs twice its weights in memory here, and a tight memory limit fails.
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
            await self._publish_failure(job_name, partition, str(error), during="start")
            return
        problem = self._prefetch_problem(job, payload["in_flight"])
        if problem:
            log.error("job.start_failed job=%s partition=%s error=%s", job_name, partition, problem)
            await self._publish_failure(job_name, partition, problem, during="start")
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

    async def _publish_failure(self, job_name: str, partition: str, error: str, *, during: str = "step") -> None:
        await self._publish_control(
            job_name,
            ControlType.JOB_FAILED,
            job=job_name,
            partition=partition,
            error=error,
            worker=self.worker_id,
            during=during,
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
        replicas = [str(worker) for worker in payload.get("replicas", [])]
        sends = job.replica_sends(payload["step"], holders, self.worker_id, replicas)
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
