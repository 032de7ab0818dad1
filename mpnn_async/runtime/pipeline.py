"""The scheduler's side of the message flow for one job.

`JobChannel` owns the job's reply queue and heartbeat subscription, sends
input blocks, output gradients and control messages to the partitions, and
turns what comes back (output slices, `micro_batch.done`, `step.done`,
`job.ready`) into awaitable results. Every wait is bounded: it raises
`RecoveryNeeded` when a deadline passes or a partition's workers stop sending
heartbeats, so the caller can roll the job back instead of hanging.

Replies are keyed by the job's generation: anything sent before a rollback
carries an older generation and is ignored.
"""

from __future__ import annotations

import asyncio
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
    control,
    parse_control,
    partition_binding,
    partition_routing_key,
    scheduler_routing_key,
)
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

__all__ = ["JobChannel", "JobFailedError", "RecoveryNeeded", "SCHEDULER"]

log = logging.getLogger(__name__)

# How often a wait wakes up to check heartbeats and failures.
_POLL_S = 0.2


class JobFailedError(FatalError):
    """A partition reported that it cannot go on, or the job could not recover."""


class RecoveryNeeded(MpnnError):
    """A wait cannot finish (deadline passed, or a partition lost its workers)."""


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
        self.generation = 0
        # Partition name -> id of the worker that last reported it ready.
        self.workers: dict[str, str] = {}
        self._failure: asyncio.Future[None] | None = None
        self._waiters = Waiters()
        self._outputs: dict[tuple[Any, ...], Gather] = {}
        self._reported: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._tags: list[str] = []
        self._queues: list[str] = []

    def __repr__(self) -> str:
        return f"<JobChannel {self.job} generation={self.generation} {self.liveness!r}>"

    async def open(self) -> None:
        self._failure = asyncio.get_running_loop().create_future()
        # Declaring the partition queues here too lets blocks wait for workers that start later.
        for partition in self.plan.partitions:
            await self.transport.declare_queue(f"part.{partition}", [partition_binding(partition)], durable=True)
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

    # -- sending ---------------------------------------------------------------------------

    async def publish_to_partitions(self, kind: ControlType, **payload: Any) -> None:
        body = control(kind, **payload)
        await self.transport.publish_many(
            Outgoing(partition_routing_key(self.job, partition), body) for partition in self.plan.partitions
        )

    def block(
        self, kind: MessageKind, step: int, micro_batch: int, layer: int, destination: str, array: np.ndarray
    ) -> Outgoing:
        header = BlockHeader(
            kind=kind,
            job=self.job,
            step=step,
            micro_batch=micro_batch,
            layer=layer,
            source=SCHEDULER,
            destination=destination,
            attempt=self.generation,
        )
        return Outgoing(partition_routing_key(self.job, destination), encode_block(header, array))

    async def forward(
        self, kind: MessageKind, step: int, micro_batch: int, inputs: np.ndarray, *, timeout_s: float
    ) -> np.ndarray:
        """Send one input block through the network and return the assembled output."""
        depth = self.spec.depth
        key = ("output", self.generation, kind, step, micro_batch)
        self._outputs[key] = Gather(expected=tuple(self.plan.owners(depth)))
        inputs = np.ascontiguousarray(inputs, dtype=self.spec.np_dtype)
        try:
            await self.transport.publish_many(
                self.block(kind, step, micro_batch, 0, owner, inputs) for owner in self.plan.owners(1)
            )
            gather = await self.wait(key, timeout_s, f"the output of step {step} micro-batch {micro_batch}")
        finally:
            self._outputs.pop(key, None)
        outputs = np.empty((inputs.shape[0], self.spec.width(depth)), dtype=self.spec.np_dtype)
        for owner, block in gather.blocks.items():
            outputs[:, self.plan.neurons(owner, depth)] = block
        return outputs

    async def send_output_gradient(self, step: int, micro_batch: int, gradient: np.ndarray) -> None:
        depth = self.spec.depth
        await self.transport.publish_many(
            self.block(
                MessageKind.GRADIENT,
                step,
                micro_batch,
                depth,
                owner,
                np.ascontiguousarray(gradient[:, self.plan.neurons(owner, depth)]),
            )
            for owner in self.plan.owners(depth)
        )

    # -- waiting ---------------------------------------------------------------------------

    async def wait(self, key: tuple[Any, ...], timeout_s: float, what: str, *, recoverable: bool = True) -> Any:
        """Wait for the result under `key`.

        Raises JobFailedError if a partition reported failure, and on timeout
        or lost workers RecoveryNeeded (or JobFailedError if not `recoverable`).
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
                # The state of a worker that loaded the job and then went silent is
                # gone, even if another worker now serves its partition.
                lost = sorted(p for p, worker in self.workers.items() if self.liveness.is_lost(worker))
                problem = ""
                if lost and recoverable:
                    problem = (
                        f"no heartbeat for {self.liveness.timeout_s:.1f} s from the workers that "
                        f"loaded partitions {lost}"
                    )
                elif time.monotonic() > deadline:
                    problem = f"timed out after {timeout_s:.1f} s waiting for {what}{self._missing(key)}"
                if problem:
                    if recoverable:
                        raise RecoveryNeeded(problem)
                    raise JobFailedError(f"job {self.job}: {problem}")
        finally:
            self._waiters.discard(key)
            self._reported.pop(key, None)

    def _missing(self, key: tuple[Any, ...]) -> str:
        if key[0] != "ready":
            return ""
        missing = sorted(set(self.plan.partitions) - set(self._reported.get(key, {})))
        return f" (no reply from partitions {missing}; is a worker running for each?)"

    async def start_partitions(self, *, step: int, versions: dict[str, int], in_flight: int, optimizer: dict[str, Any], model: str, timeout_s: float) -> None:
        """Make every partition load its checkpoint version; wait until all have."""
        await self.publish_to_partitions(
            ControlType.JOB_START,
            job=self.job,
            plan_id=self.plan.plan_id,
            model=model,
            optimizer=optimizer,
            step=step,
            in_flight=in_flight,
            generation=self.generation,
            versions=versions,
        )
        await self.wait(
            ("ready", self.generation), timeout_s, "every partition to load its weights", recoverable=False
        )

    async def wait_for_live_workers(self, timeout_s: float) -> None:
        """Wait until every partition has a worker whose heartbeats are current."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = sorted(set(self.plan.partitions) - self.liveness.live_partitions())
            if not missing:
                return
            if time.monotonic() > deadline:
                raise JobFailedError(
                    f"job {self.job}: partitions {missing} have had no live worker for {timeout_s:.0f} s; "
                    "start `mpnn worker --partition NAME` for each"
                )
            await asyncio.sleep(_POLL_S)

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
                self.liveness.record(payload["worker"], [str(p) for p in payload["partitions"]])
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
            if payload["generation"] == self.generation:
                self.workers[partition] = payload["worker"]
            self._report(("ready", payload["generation"]), partition, self.plan.partitions, payload)
        elif kind is ControlType.MICRO_BATCH_DONE:
            key = ("mb_done", payload["attempt"], payload["step"], payload["micro_batch"])
            self._report(key, partition, self.plan.owners(1), payload)
        elif kind is ControlType.STEP_DONE:
            key = ("step_done", payload["generation"], payload["step"])
            self._report(key, partition, self.plan.partitions, payload)
        elif kind is ControlType.JOB_FAILED:
            log.error("job.partition_failed job=%s partition=%s error=%s", self.job, partition, payload["error"])
            if self._failure is not None and not self._failure.done():
                self._failure.set_exception(JobFailedError(f"partition {partition!r} failed: {payload['error']}"))
        else:
            raise _UnexpectedReply(f"{kind} is not sent to the scheduler")

    def _report(self, key: tuple[Any, ...], partition: str, expected: Iterable[str], payload: Any) -> None:
        expected = set(expected)
        if partition not in expected:
            raise _UnexpectedReply(f"{partition!r} is not expected to report {key[0]}")
        if key[1] != self.generation:
            return
        reported = self._reported.setdefault(key, {})
        reported[partition] = payload
        if set(reported) >= expected:
            self._waiters.resolve(key, dict(reported))
