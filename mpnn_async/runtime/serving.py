"""The inference server: request/reply inference over the partition workers.

Clients publish an input block (the wire block format, kind `inference`,
layer 0) with routing key `infer.<model>`, a `reply_to` routing key and a
correlation id. The server batches requests that arrive together, sends each
batch through the workers as one forward-only micro-batch, splits the output
and replies to each request with its rows. Failures get an error reply (a
JSON control message of type `inference.error`), never silence.

The server serves one named snapshot at a time, as a serving job on the
workers. `switch` starts a job for the new snapshot and waits until every
partition has loaded it. Only then do new batches go to it, while batches
already in flight finish on the old job. So no request mixes two versions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any

import numpy as np

from mpnn_async.errors import MpnnError
from mpnn_async.planning import Plan
from mpnn_async.runtime import snapshots
from mpnn_async.runtime.gather import Gather
from mpnn_async.runtime.protocol import (
    ControlType,
    control,
    inference_routing_key,
    parse_control,
    partition_binding,
    partition_routing_key,
    scheduler_routing_key,
)
from mpnn_async.runtime.waiters import Waiters
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport.base import Delivery, Outgoing, Transport, UnroutableError
from mpnn_async.wire import (
    BlockHeader,
    CodecError,
    MessageKind,
    decode_block,
    decode_control,
    encode_block,
    encode_control,
    is_data_frame,
)

__all__ = ["InferenceServer", "ServingJob", "ERROR_TYPE", "SNAPSHOT_HEADER", "SWITCH_TYPE"]

log = logging.getLogger(__name__)

ERROR_TYPE = "inference.error"
# Control message on the request queue that makes the server switch snapshots.
SWITCH_TYPE = "serve.switch"
# Reply header naming the snapshot whose weights computed the output.
SNAPSHOT_HEADER = "x-mpnn-snapshot"


@dataclasses.dataclass(slots=True)
class _Request:
    delivery: Delivery
    inputs: np.ndarray
    received: float


@dataclasses.dataclass(slots=True)
class ServingJob:
    """One snapshot loaded on every partition, under a job name of its own."""

    name: str
    snapshot: str
    step: int
    plan: Plan
    queue: str = ""
    consumer_tag: str = ""
    in_flight: int = 0


class InferenceServer:
    """Serves one model's snapshot; `start`, then `switch` to change snapshots, then `stop`."""

    def __init__(
        self,
        *,
        transport: Transport,
        store: Store,
        model: str,
        max_batch_rows: int = 256,
        max_delay_s: float = 0.002,
        request_timeout_s: float = 30.0,
        ready_timeout_s: float = 60.0,
        max_message_bytes: int = 128 * 1024 * 1024,
    ) -> None:
        self.transport = transport
        self.model_store = ModelStore(store, model)
        self.model = model
        self.max_batch_rows = max_batch_rows
        self.max_delay_s = max_delay_s
        self.request_timeout_s = request_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.max_message_bytes = max_message_bytes
        self.active: ServingJob | None = None
        self.counters = {"requests": 0, "batches": 0, "errors": 0}
        self._pending: list[_Request] = []
        self._wakeup = asyncio.Event()
        self._batcher: asyncio.Task[None] | None = None
        self._request_tag: str | None = None
        self._waiters = Waiters()
        self._outputs: dict[tuple[str, int], Gather] = {}
        # Per serving job: partitions that reported ready, and all it needs.
        self._ready: dict[str, set[str]] = {}
        self._expected_partitions: dict[str, set[str]] = {}
        self._micro_batch = 0

    def __repr__(self) -> str:
        snapshot = self.active.snapshot if self.active else None
        return f"<InferenceServer model={self.model} snapshot={snapshot} counters={self.counters}>"

    async def start(self, snapshot: str) -> None:
        self.active = await self._start_job(snapshot)
        queue = await self.transport.declare_queue(
            f"infer.{self.model}", [inference_routing_key(self.model)], durable=True
        )
        self._batcher = asyncio.create_task(self._run_batches())
        self._request_tag = await self.transport.consume(
            queue, self._on_request, prefetch=4 * self.max_batch_rows
        )
        log.info("serve.started model=%s snapshot=%s", self.model, snapshot)

    async def switch(self, snapshot: str) -> None:
        """Load `snapshot` on every partition, then send new batches to it."""
        new = await self._start_job(snapshot)
        old, self.active = self.active, new
        log.info("serve.switched model=%s from=%s to=%s", self.model, old and old.snapshot, snapshot)
        if old is not None:
            while old.in_flight:
                await asyncio.sleep(0.01)
            await self._end_job(old)

    async def stop(self) -> None:
        if self._request_tag is not None:
            await self.transport.cancel(self._request_tag)
            self._request_tag = None
        if self._batcher is not None:
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
        for request in self._pending:
            await self._reply_error(request, "stopped", "the server stopped before answering")
        self._pending.clear()
        if self.active is not None:
            await self._end_job(self.active)
            self.active = None
        log.info("serve.stopped model=%s counters=%s", self.model, self.counters)

    # -- serving jobs ------------------------------------------------------------------

    async def _start_job(self, snapshot: str) -> ServingJob:
        loop = asyncio.get_running_loop()
        manifest = await loop.run_in_executor(None, snapshots.load_manifest, self.model_store, snapshot)
        plan = Plan.from_dict(await loop.run_in_executor(None, self.model_store.load_plan, manifest["plan_id"]))
        job = ServingJob(name=f"serve-{uuid.uuid4().hex[:12]}", snapshot=snapshot, step=manifest["step"], plan=plan)
        for partition in plan.partitions:
            await self.transport.declare_queue(f"part.{partition}", [partition_binding(partition)], durable=True)
        job.queue = await self.transport.declare_queue(
            f"sched.{job.name}", [scheduler_routing_key(job.name)], durable=False, auto_delete=True
        )
        job.consumer_tag = await self.transport.consume(job.queue, self._on_reply, prefetch=512)
        self._ready[job.name] = set()
        self._expected_partitions[job.name] = set(plan.partitions)
        ready = self._waiters.get(("ready", job.name))
        body = control(
            ControlType.JOB_START,
            job=job.name,
            plan_id=plan.plan_id,
            model=self.model,
            optimizer={},
            step=job.step,
            in_flight=4,
            snapshot=snapshot,
        )
        # TODO: serving addresses partitions, not replicas: with several workers on a
        # partition, the shared queue hands one request's blocks to different workers.
        await self.transport.publish_many(
            Outgoing(partition_routing_key(job.name, partition), body) for partition in plan.partitions
        )
        try:
            await asyncio.wait_for(ready, self.ready_timeout_s)
        except asyncio.TimeoutError:
            missing = sorted(set(plan.partitions) - self._ready[job.name])
            await self._end_job(job)
            raise MpnnError(
                f"snapshot {snapshot!r}: partitions {missing} did not load it within "
                f"{self.ready_timeout_s:.0f} s; is a worker running for each?"
            ) from None
        return job

    async def _end_job(self, job: ServingJob) -> None:
        body = control(ControlType.JOB_END, job=job.name)
        await self.transport.publish_many(
            Outgoing(partition_routing_key(job.name, partition), body) for partition in job.plan.partitions
        )
        await self.transport.cancel(job.consumer_tag)
        await self.transport.delete_queue(job.queue)
        self._ready.pop(job.name, None)
        self._expected_partitions.pop(job.name, None)
        self._waiters.discard(("ready", job.name))

    # -- requests ----------------------------------------------------------------------

    async def _on_request(self, delivery: Delivery) -> None:
        if delivery.body[:1] == b"{" and await self._handle_switch(delivery):
            return
        self.counters["requests"] += 1
        try:
            inputs = self._parse_request(delivery.body)
        except InvalidRequest as error:
            log.warning(
                "request.rejected model=%s correlation_id=%s reason=%s detail=%s",
                self.model, delivery.correlation_id, error.reason, error.detail,
            )
            await self._reply_error(_Request(delivery, np.empty(0), 0.0), error.reason, error.detail)
            return
        self._pending.append(_Request(delivery, inputs, time.monotonic()))
        self._wakeup.set()

    async def _handle_switch(self, delivery: Delivery) -> bool:
        """Run a `serve.switch` command from the request queue; return False if it is not one."""
        try:
            command = decode_control(delivery.body, max_size_bytes=self.max_message_bytes)
        except CodecError:
            return False
        if command.kind != SWITCH_TYPE:
            return False
        snapshot = command.payload.get("snapshot")
        try:
            if not isinstance(snapshot, str):
                raise InvalidRequest("invalid_field", "serve.switch needs a string field 'snapshot'")
            await self.switch(snapshot)
        except MpnnError as error:
            log.error("serve.switch_failed model=%s snapshot=%s error=%s", self.model, snapshot, error)
            await delivery.reject("switch_failed", str(error))
            return True
        await delivery.ack()
        return True

    def _parse_request(self, body: bytes) -> np.ndarray:
        if not is_data_frame(body):
            raise InvalidRequest("bad_magic", "a request body must be an inference block (wire block format)")
        try:
            block = decode_block(body, max_size_bytes=self.max_message_bytes)
        except CodecError as error:
            raise InvalidRequest(str(error.reason), error.detail) from None
        header, array = block.header, block.array
        assert self.active is not None
        spec = self.active.plan.spec
        if header.kind is not MessageKind.INFERENCE or header.layer != 0:
            raise InvalidRequest("invalid_request", "a request must be an inference block of layer 0")
        if array.ndim != 2 or array.shape[1] != spec.input_width or array.shape[0] < 1:
            raise InvalidRequest(
                "invalid_request", f"inputs of shape {array.shape}, expected (rows, {spec.input_width})"
            )
        if array.dtype != spec.np_dtype:
            raise InvalidRequest(
                "invalid_request", f"inputs of dtype {array.dtype}, the model computes in {spec.dtype}"
            )
        if not np.isfinite(array).all():
            raise InvalidRequest("non_finite", "inputs contain NaN or infinity")
        return array

    async def _reply(self, request: _Request, body: bytes, headers: dict[str, Any]) -> None:
        delivery = request.delivery
        if delivery.reply_to:
            try:
                await self.transport.publish(
                    Outgoing(
                        delivery.reply_to,
                        body,
                        headers=headers,
                        persistent=False,
                        correlation_id=delivery.correlation_id,
                    )
                )
            except UnroutableError:
                log.warning(
                    "reply.unroutable model=%s reply_to=%s correlation_id=%s",
                    self.model, delivery.reply_to, delivery.correlation_id,
                )
        await delivery.ack()

    async def _reply_outputs(self, job: ServingJob, batch: list[_Request], outputs: np.ndarray) -> None:
        """Reply to every request of a batch with its rows; the confirms are awaited together."""
        header = BlockHeader(
            kind=MessageKind.INFERENCE, job=job.name, step=job.step, micro_batch=0,
            layer=job.plan.spec.depth, source="serve", destination="client",
        )
        replies = []
        start = 0
        for request in batch:
            rows = request.inputs.shape[0]
            delivery = request.delivery
            if delivery.reply_to:
                replies.append(
                    Outgoing(
                        delivery.reply_to,
                        encode_block(header, outputs[start : start + rows]),
                        headers={SNAPSHOT_HEADER: job.snapshot},
                        persistent=False,
                        # A client that went away must not fail the whole batch's replies.
                        mandatory=False,
                        correlation_id=delivery.correlation_id,
                    )
                )
            start += rows
        await self.transport.publish_many(replies)
        for request in batch:
            await request.delivery.ack()

    async def _reply_error(self, request: _Request, reason: str, detail: str) -> None:
        self.counters["errors"] += 1
        body = encode_control(ERROR_TYPE, {"reason": reason, "detail": detail})
        await self._reply(request, body, {})

    # -- batching ----------------------------------------------------------------------

    async def _run_batches(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            # Give requests that arrive together a moment to join the batch.
            await asyncio.sleep(self.max_delay_s)
            batch: list[_Request] = []
            rows = 0
            while self._pending and (not batch or rows + self._pending[0].inputs.shape[0] <= self.max_batch_rows):
                request = self._pending.pop(0)
                batch.append(request)
                rows += request.inputs.shape[0]
            if self._pending:
                self._wakeup.set()
            asyncio.create_task(self._serve_batch(batch))

    async def _serve_batch(self, batch: list[_Request]) -> None:
        job = self.active
        assert job is not None
        job.in_flight += 1
        try:
            inputs = np.concatenate([request.inputs for request in batch])
            try:
                outputs = await asyncio.wait_for(self._forward(job, inputs), self.request_timeout_s)
            except asyncio.TimeoutError:
                log.error(
                    "batch.timed_out model=%s snapshot=%s requests=%d timeout_s=%.1f",
                    self.model, job.snapshot, len(batch), self.request_timeout_s,
                )
                for request in batch:
                    await self._reply_error(
                        request, "timed_out", f"no output within {self.request_timeout_s:.1f} s"
                    )
                return
            self.counters["batches"] += 1
            await self._reply_outputs(job, batch, outputs)
        finally:
            job.in_flight -= 1

    async def _forward(self, job: ServingJob, inputs: np.ndarray) -> np.ndarray:
        plan = job.plan
        depth = plan.spec.depth
        self._micro_batch += 1
        micro_batch = self._micro_batch
        key = (job.name, micro_batch)
        self._outputs[key] = Gather(expected=tuple(plan.owners(depth)))
        done = self._waiters.get(("output",) + key)
        try:
            await self.transport.publish_many(
                Outgoing(
                    partition_routing_key(job.name, owner),
                    encode_block(
                        BlockHeader(
                            kind=MessageKind.INFERENCE, job=job.name, step=job.step,
                            micro_batch=micro_batch, layer=0, source="scheduler", destination=owner,
                        ),
                        inputs,
                    ),
                    persistent=False,
                )
                for owner in plan.owners(1)
            )
            gather = await done
        finally:
            self._outputs.pop(key, None)
            self._waiters.discard(("output",) + key)
        outputs = np.empty((inputs.shape[0], plan.spec.width(depth)), dtype=plan.spec.np_dtype)
        for owner, block in gather.blocks.items():
            outputs[:, plan.neurons(owner, depth)] = block
        return outputs

    # -- replies from the workers ------------------------------------------------------

    async def _on_reply(self, delivery: Delivery) -> None:
        try:
            if is_data_frame(delivery.body):
                self._on_output(delivery.body)
            else:
                kind, payload = parse_control(delivery.body, max_size_bytes=self.max_message_bytes)
                self._on_control(kind, payload)
        except (CodecError, MpnnError) as error:
            log.warning("serve.reply_rejected model=%s detail=%s", self.model, error)
            await delivery.reject(str(getattr(error, "reason", "unexpected_block")), str(error))
            return
        await delivery.ack()

    def _on_output(self, body: bytes) -> None:
        block = decode_block(body, max_size_bytes=self.max_message_bytes)
        header = block.header
        gather = self._outputs.get((header.job, header.micro_batch))
        if gather is None or header.source not in gather.expected or header.source in gather.blocks:
            return
        gather.add(header.source, block.array)
        if gather.is_complete:
            self._waiters.resolve(("output", header.job, header.micro_batch), gather)

    def _on_control(self, kind: ControlType, payload: dict[str, Any]) -> None:
        job = payload["job"]
        if kind is ControlType.JOB_READY and job in self._ready:
            self._ready[job].add(payload["partition"])
            self._resolve_ready(job)
        elif kind is ControlType.JOB_FAILED:
            log.error("serve.partition_failed job=%s partition=%s error=%s", job, payload["partition"], payload["error"])

    def _resolve_ready(self, job: str) -> None:
        future = self._waiters.peek(("ready", job))
        expected = self._expected_partitions.get(job)
        if future is not None and expected is not None and self._ready[job] >= expected and not future.done():
            future.set_result(None)


class InvalidRequest(MpnnError):
    """A request the server rejects; the reason goes back in the error reply."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
