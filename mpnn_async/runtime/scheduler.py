"""The scheduler: runs one training job over the partition workers.

For each step it feeds micro-batches into the owners of layer 1, keeping up
to `in_flight` of them in the pipeline. It assembles the last layer's slices,
computes the loss, and sends each owner of the last layer the gradient of its
columns. When every micro-batch of the step has finished its backward pass,
it commands the optimizer step and waits until every partition has persisted
its new version. Evaluation runs forward-only `inference` blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any, Callable

import numpy as np

from mpnn_async.data import Dataset, DatasetSpec, load_dataset
from mpnn_async.data.batching import epoch_batches, split_micro_batches
from mpnn_async.errors import ConfigError, FatalError, MpnnError
from mpnn_async.model.losses import Loss, loss_and_gradient
from mpnn_async.planning import Plan
from mpnn_async.runtime import weights
from mpnn_async.runtime.gather import Gather
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.progress import ProgressEvent, ProgressRecorder
from mpnn_async.runtime.protocol import (
    ControlType,
    control,
    parse_control,
    partition_binding,
    partition_routing_key,
    progress_routing_key,
    scheduler_routing_key,
)
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport.base import Delivery, Outgoing, Transport
from mpnn_async.wire import (
    BlockHeader,
    CodecError,
    MessageKind,
    decode_block,
    encode_block,
    encode_control,
    is_data_frame,
)

__all__ = ["JobFailedError", "JobResult", "JobRunner"]

log = logging.getLogger(__name__)

SCHEDULER = "scheduler"


class JobFailedError(FatalError):
    """A partition reported that it cannot go on, or the job timed out waiting for one."""


@dataclasses.dataclass(frozen=True, slots=True)
class JobResult:
    job: str
    model: str
    plan_id: str
    steps: int
    train_loss: float
    test_accuracy: float | None
    test_loss: float
    wall_time_s: float
    samples_per_s: float
    store_path: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class JobRunner:
    """Runs one job to completion; `run()` returns its result or raises."""

    def __init__(
        self,
        *,
        job: JobSpec,
        transport: Transport,
        store: Store,
        dataset: Dataset | None = None,
        ready_timeout_s: float = 120.0,
        step_timeout_s: float = 600.0,
        max_message_bytes: int = 128 * 1024 * 1024,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> None:
        self.job = job
        self.transport = transport
        self.store = store
        self.model_store = ModelStore(store, job.training.store_model)
        self.plan: Plan = job.build_plan()
        self.spec = job.model
        self.dataset = dataset
        self.ready_timeout_s = ready_timeout_s
        self.step_timeout_s = step_timeout_s
        self.max_message_bytes = max_message_bytes
        self.progress = ProgressRecorder(self.model_store, job.name)
        self._on_progress = on_progress
        self.steps_done = 0
        self._samples = 0
        self._failure: asyncio.Future[None] | None = None
        self._waiters: dict[tuple[Any, ...], asyncio.Future[Any]] = {}
        self._outputs: dict[tuple[MessageKind, int, int], Gather] = {}
        self._reported: dict[tuple[Any, ...], set[str]] = {}
        self._consumer_tag: str | None = None
        self._queue: str | None = None

    def __repr__(self) -> str:
        return f"<JobRunner {self.job.name} plan={self.plan.plan_id} steps_done={self.steps_done}>"

    @property
    def name(self) -> str:
        return self.job.name

    async def run(self) -> JobResult:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        if self.dataset is None:
            spec = DatasetSpec.from_dict(self.job.dataset)
            self.dataset = await loop.run_in_executor(
                None, lambda: load_dataset(spec, dtype=self.spec.np_dtype)
            )
        self._check_dataset(self.dataset)
        start_step = await loop.run_in_executor(
            None, weights.prepare_partitions, self.model_store, self.plan
        )
        log.info(
            "job.started job=%s plan=%s partitions=%s start_step=%d",
            self.name,
            self.plan.plan_id,
            ",".join(self.plan.partitions),
            start_step,
        )
        await self._open_queues()
        try:
            await self._start_partitions(start_step)
            result = await self._train(self.dataset, start_step, started)
        except BaseException:
            # Let the workers free the failed job's state; the original error matters more.
            with contextlib.suppress(Exception):
                await self._publish_to_partitions(ControlType.JOB_END, job=self.name)
            raise
        finally:
            await self._close_queues()
        log.info("job.finished job=%s result=%s", self.name, result.to_dict())
        return result

    def _check_dataset(self, dataset: Dataset) -> None:
        if dataset.features != self.spec.input_width:
            raise ConfigError(
                "model.input",
                f"is {self.spec.input_width} but dataset {dataset.name!r} has {dataset.features} features",
                fix=f"set model.input = {dataset.features}",
            )
        outputs = self.spec.width(self.spec.depth)
        if self.spec.loss is Loss.SOFTMAX_CROSS_ENTROPY and dataset.classes > outputs:
            raise ConfigError(
                "model.layers",
                f"the last layer has {outputs} outputs but dataset {dataset.name!r} has {dataset.classes} classes",
                fix=f"make the last layer {dataset.classes} wide",
            )

    # -- queues ----------------------------------------------------------------------------

    async def _open_queues(self) -> None:
        # Declaring the partition queues here too lets blocks wait for workers that start later.
        for partition in self.plan.partitions:
            await self.transport.declare_queue(
                f"part.{partition}", [partition_binding(partition)], durable=True
            )
        self._queue = await self.transport.declare_queue(
            f"sched.{self.name}", [scheduler_routing_key(self.name)], durable=True
        )
        self._consumer_tag = await self.transport.consume(self._queue, self._on_message, prefetch=512)

    async def _close_queues(self) -> None:
        if self._consumer_tag is not None:
            await self.transport.cancel(self._consumer_tag)
            self._consumer_tag = None
        if self._queue is not None:
            await self.transport.delete_queue(self._queue)
            self._queue = None

    async def _publish_to_partitions(self, kind: ControlType, **payload: Any) -> None:
        body = control(kind, **payload)
        await self.transport.publish_many(
            Outgoing(partition_routing_key(self.name, partition), body)
            for partition in self.plan.partitions
        )

    # -- message handling --------------------------------------------------------------------

    async def _on_message(self, delivery: Delivery) -> None:
        try:
            if is_data_frame(delivery.body):
                self._on_block(delivery.body)
            else:
                kind, payload = parse_control(delivery.body, max_size_bytes=self.max_message_bytes)
                self._on_control(kind, payload)
        except (CodecError, _UnexpectedOutput) as error:
            reason = str(getattr(error, "reason", "unexpected_block"))
            log.warning("message.rejected job=%s reason=%s detail=%s", self.name, reason, error)
            await delivery.reject(reason, str(error))
            return
        await delivery.ack()

    def _on_block(self, body: bytes) -> None:
        block = decode_block(body, max_size_bytes=self.max_message_bytes)
        header, array = block.header, block.array
        depth = self.spec.depth
        if header.job != self.name or header.destination != SCHEDULER:
            raise _UnexpectedOutput(f"block for {header.job}/{header.destination} reached the scheduler")
        if header.kind is MessageKind.GRADIENT or header.layer != depth:
            raise _UnexpectedOutput(f"the scheduler only takes layer-{depth} activations")
        if header.source not in self.plan.owners(depth):
            raise _UnexpectedOutput(f"{header.source!r} owns no neuron of layer {depth}")
        columns = len(self.plan.neurons(header.source, depth))
        if array.ndim != 2 or array.shape[1] != columns or array.dtype != self.spec.np_dtype:
            raise _UnexpectedOutput(f"output block of shape {array.shape}, expected (rows, {columns})")
        key = (header.kind, header.step, header.micro_batch)
        gather = self._outputs.get(key)
        if gather is None:
            # Late blocks of a finished micro-batch (redeliveries) are dropped here.
            return
        if header.source in gather.blocks:
            return
        gather.add(header.source, array)
        if gather.is_complete:
            self._resolve(("output",) + key, gather)

    def _on_control(self, kind: ControlType, payload: dict[str, Any]) -> None:
        if payload["job"] != self.name:
            raise _UnexpectedOutput(f"control message of job {payload['job']!r}")
        partition = payload.get("partition", "")
        if kind is ControlType.JOB_READY:
            self.progress.workers[partition] = payload["worker"]
            self._report(("ready",), partition, set(self.plan.partitions), payload)
        elif kind is ControlType.MICRO_BATCH_DONE:
            key = ("mb_done", payload["step"], payload["micro_batch"])
            self._report(key, partition, set(self.plan.owners(1)), payload)
        elif kind is ControlType.STEP_DONE:
            self._report(("step_done", payload["step"]), partition, set(self.plan.partitions), payload)
        elif kind is ControlType.JOB_FAILED:
            log.error("job.partition_failed job=%s partition=%s error=%s", self.name, partition, payload["error"])
            if self._failure is not None and not self._failure.done():
                self._failure.set_exception(
                    JobFailedError(f"partition {partition!r} failed: {payload['error']}")
                )
        else:
            raise _UnexpectedOutput(f"{kind} is not sent to the scheduler")

    def _report(self, key: tuple[Any, ...], partition: str, expected: set[str], payload: Any) -> None:
        reported = self._reported.setdefault(key, set())
        if partition not in expected:
            raise _UnexpectedOutput(f"{partition!r} is not expected to report {key[0]}")
        reported.add(partition)
        if reported >= expected:
            self._resolve(key, payload)

    def _future(self, key: tuple[Any, ...]) -> asyncio.Future[Any]:
        future = self._waiters.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters[key] = future
        return future

    def _resolve(self, key: tuple[Any, ...], value: Any) -> None:
        future = self._future(key)
        if not future.done():
            future.set_result(value)

    async def _wait(self, key: tuple[Any, ...], timeout_s: float, what: str) -> Any:
        future = self._future(key)
        assert self._failure is not None
        done, _ = await asyncio.wait(
            {future, self._failure}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if self._failure in done:
            self._failure.result()
        if future not in done:
            missing = self._missing(key)
            raise JobFailedError(f"job {self.name}: timed out after {timeout_s:.0f} s waiting for {what}{missing}")
        self._waiters.pop(key, None)
        self._reported.pop(key, None)
        return future.result()

    def _missing(self, key: tuple[Any, ...]) -> str:
        reported = self._reported.get(key)
        if key[0] == "ready":
            missing = sorted(set(self.plan.partitions) - (reported or set()))
            return f" (no reply from partitions {missing}; is a worker running for each?)"
        return ""

    # -- the job ---------------------------------------------------------------------------

    async def _publish_progress(self, event: ProgressEvent) -> None:
        """Record an event in the store, publish it on `<job>.progress`, hand it to the callback."""
        # The store write fsyncs, so it runs off the event loop.
        await asyncio.get_running_loop().run_in_executor(None, self.progress.record, event)
        # Not mandatory and not persistent, because no consumer is required for progress.
        await self.transport.publish(
            Outgoing(
                progress_routing_key(self.name),
                encode_control("job.progress", event.to_dict()),
                persistent=False,
                mandatory=False,
            )
        )
        if self._on_progress is not None:
            self._on_progress(event)

    async def _start_partitions(self, start_step: int) -> None:
        await self._publish_to_partitions(
            ControlType.JOB_START,
            job=self.name,
            plan_id=self.plan.plan_id,
            model=self.model_store.model,
            optimizer=self.job.optimizer.to_dict(),
            step=start_step,
            in_flight=self.job.training.in_flight,
        )
        await self._wait(("ready",), self.ready_timeout_s, "every partition to load its weights")
        log.info("job.partitions_ready job=%s", self.name)

    async def _train(self, dataset: Dataset, start_step: int, started: float) -> JobResult:
        training = self.job.training
        step = start_step
        epoch_losses: list[float] = []
        accuracy: float | None = None
        test_loss = float("nan")
        epoch = 0
        for epoch in range(training.epochs):
            step, epoch_losses = await self._run_epoch(dataset, epoch, step)
            test_loss, accuracy = await self._evaluate(step, dataset)
            await self._publish_progress(
                ProgressEvent(
                    job=self.name,
                    epoch=epoch,
                    step=step,
                    loss=float(np.mean(epoch_losses)),
                    test_loss=test_loss,
                    accuracy=accuracy,
                    total_steps=self._total_steps(dataset),
                )
            )
            if self._reached_max_steps():
                break

        train_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
        await self._publish_progress(
            ProgressEvent(
                job=self.name,
                epoch=epoch,
                step=step,
                loss=train_loss,
                test_loss=test_loss,
                accuracy=accuracy,
                total_steps=self._total_steps(dataset),
                state="finished",
            )
        )
        await self._publish_to_partitions(ControlType.JOB_END, job=self.name)
        wall_time_s = time.monotonic() - started
        return JobResult(
            job=self.name,
            model=self.model_store.model,
            plan_id=self.plan.plan_id,
            steps=self.steps_done,
            train_loss=train_loss,
            test_accuracy=accuracy,
            test_loss=test_loss,
            wall_time_s=wall_time_s,
            samples_per_s=self._samples / wall_time_s if wall_time_s > 0 else 0.0,
            store_path=str(self.store.root),
        )

    def _reached_max_steps(self) -> bool:
        max_steps = self.job.training.max_steps
        return bool(max_steps) and self.steps_done >= max_steps

    async def _run_epoch(self, dataset: Dataset, epoch: int, step: int) -> tuple[int, list[float]]:
        """Run the steps of one epoch from `step`; return the next step and each step's loss."""
        training = self.job.training
        losses: list[float] = []
        batches = epoch_batches(
            dataset.x_train.shape[0], training.batch_rows, seed=training.seed, epoch=epoch
        )
        for batch_index, indices in enumerate(batches):
            step_started = time.monotonic()
            is_last = (self.steps_done + 1 == training.max_steps) or (
                epoch == training.epochs - 1 and batch_index == len(batches) - 1
            )
            persist = is_last or (self.steps_done + 1) % training.persist_every_steps == 0
            loss = await self._run_step(
                step, dataset.x_train[indices], dataset.y_train[indices], persist=persist
            )
            step += 1
            self.steps_done += 1
            self._samples += len(indices)
            losses.append(loss)
            elapsed_s = time.monotonic() - step_started
            await self._publish_progress(
                ProgressEvent(
                    job=self.name,
                    epoch=epoch,
                    step=step,
                    loss=loss,
                    samples_per_s=len(indices) / elapsed_s if elapsed_s > 0 else 0.0,
                    total_steps=self._total_steps(dataset),
                )
            )
            if self._reached_max_steps():
                break
        return step, losses

    def _total_steps(self, dataset: Dataset) -> int:
        training = self.job.training
        per_epoch = -(-int(dataset.x_train.shape[0]) // training.batch_rows)
        total = per_epoch * training.epochs
        return min(total, training.max_steps) if training.max_steps else total

    async def _run_step(
        self, step: int, inputs: np.ndarray, labels: np.ndarray, *, persist: bool
    ) -> float:
        rows = inputs.shape[0]
        slices = split_micro_batches(rows, self.job.training.micro_batch_rows)
        window = asyncio.Semaphore(self.job.training.in_flight)

        async def run_micro_batch(micro_batch: int, part: slice) -> float:
            async with window:
                outputs = await self._forward(MessageKind.ACTIVATION, step, micro_batch, inputs[part])
                loss, gradient = loss_and_gradient(
                    self.spec.loss, outputs, self._targets(labels[part]), batch_rows=rows
                )
                await self._send_output_gradient(step, micro_batch, gradient)
                await self._wait(
                    ("mb_done", step, micro_batch),
                    self.step_timeout_s,
                    f"the backward pass of step {step} micro-batch {micro_batch}",
                )
                return loss

        losses = await asyncio.gather(
            *(run_micro_batch(index, part) for index, part in enumerate(slices))
        )
        await self._publish_to_partitions(
            ControlType.STEP_APPLY,
            job=self.name,
            step=step,
            micro_batches=len(slices),
            persist=persist,
        )
        await self._wait(("step_done", step), self.step_timeout_s, f"step {step} to be applied")
        return float(sum(losses))

    def _targets(self, labels: np.ndarray) -> np.ndarray:
        if self.spec.loss is Loss.SOFTMAX_CROSS_ENTROPY:
            return labels
        outputs = self.spec.width(self.spec.depth)
        targets: np.ndarray = np.eye(outputs, dtype=self.spec.np_dtype)[labels]
        return targets

    async def _forward(
        self, kind: MessageKind, step: int, micro_batch: int, inputs: np.ndarray
    ) -> np.ndarray:
        """Send one input block through the network and return the assembled output."""
        depth = self.spec.depth
        key = (kind, step, micro_batch)
        self._outputs[key] = Gather(expected=tuple(self.plan.owners(depth)))
        inputs = np.ascontiguousarray(inputs, dtype=self.spec.np_dtype)
        await self.transport.publish_many(
            self._block(kind, step, micro_batch, 0, owner, inputs) for owner in self.plan.owners(1)
        )
        gather = await self._wait(
            ("output",) + key, self.step_timeout_s, f"the output of step {step} micro-batch {micro_batch}"
        )
        del self._outputs[key]
        outputs = np.empty((inputs.shape[0], self.spec.width(depth)), dtype=self.spec.np_dtype)
        for owner, block in gather.blocks.items():
            outputs[:, self.plan.neurons(owner, depth)] = block
        return outputs

    async def _send_output_gradient(self, step: int, micro_batch: int, gradient: np.ndarray) -> None:
        depth = self.spec.depth
        await self.transport.publish_many(
            self._block(
                MessageKind.GRADIENT,
                step,
                micro_batch,
                depth,
                owner,
                np.ascontiguousarray(gradient[:, self.plan.neurons(owner, depth)]),
            )
            for owner in self.plan.owners(depth)
        )

    def _block(
        self, kind: MessageKind, step: int, micro_batch: int, layer: int, destination: str, array: np.ndarray
    ) -> Outgoing:
        header = BlockHeader(
            kind=kind,
            job=self.name,
            step=step,
            micro_batch=micro_batch,
            layer=layer,
            source=SCHEDULER,
            destination=destination,
            attempt=0,
        )
        return Outgoing(partition_routing_key(self.name, destination), encode_block(header, array))

    async def _evaluate(self, step: int, dataset: Dataset) -> tuple[float, float | None]:
        """Run the test split forward through the workers; return (loss, accuracy)."""
        x_test, y_test = dataset.x_test, dataset.y_test
        if x_test.shape[0] == 0:
            return float("nan"), None
        rows = max(self.job.training.batch_rows, 256)
        window = asyncio.Semaphore(self.job.training.in_flight)

        async def run_block(index: int, start: int) -> np.ndarray:
            async with window:
                return await self._forward(MessageKind.INFERENCE, step, index, x_test[start : start + rows])

        outputs = np.concatenate(
            await asyncio.gather(
                *(run_block(i, start) for i, start in enumerate(range(0, x_test.shape[0], rows)))
            )
        )
        loss, _ = loss_and_gradient(self.spec.loss, outputs, self._targets(y_test))
        accuracy = float(np.mean(outputs.argmax(axis=1) == y_test))
        log.info("job.evaluated job=%s step=%d test_loss=%.4f accuracy=%.4f", self.name, step, loss, accuracy)
        return loss, accuracy


class _UnexpectedOutput(MpnnError):
    reason = "unexpected_block"
