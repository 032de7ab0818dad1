"""The scheduler: runs one training job over the partition workers.

For each step it feeds micro-batches into the owners of layer 1, keeping up
to `in_flight` of them in the pipeline. It assembles the last layer's slices,
computes the loss, and sends each owner of the last layer the gradient of its
columns. When every micro-batch of the step has finished its backward pass,
it commands the optimizer step and waits until every partition has applied
it. Evaluation runs forward-only `inference` blocks.

A partition may have several replicas. Each micro-batch runs on a route
that names one replica per partition, and a micro-batch whose route loses a
worker or misses its deadline is run again on another route (`step.py`).
Workers that join, or a new plan sent with `mpnn replan`, take effect at a
step boundary whose weights are persisted.

Failures that retries cannot fix are handled by rolling back. When a
partition has no live replica left, or a step cannot be applied, the scheduler
waits until every partition has a live worker again. It then makes all of them
reload the last checkpoint, a step that every partition persisted, under a new
generation, and replays the data from there. Steps are deterministic, so the
final weights equal those of a run that never failed.
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
from mpnn_async.data.batching import epoch_batches
from mpnn_async.errors import ConfigError, MpnnError, TransportError
from mpnn_async.model.losses import Loss, loss_and_gradient
from mpnn_async.planning import Plan, build_plan
from mpnn_async.runtime import weights
from mpnn_async.runtime.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_job_document,
    save_checkpoint,
    save_job_document,
)
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.pipeline import JobChannel, JobFailedError, NoLiveWorkerError, RecoveryNeeded
from mpnn_async.runtime.pool import publish_assignments, release_pool_workers
from mpnn_async.runtime.progress import ProgressEvent, ProgressRecorder
from mpnn_async.runtime.protocol import progress_routing_key
from mpnn_async.runtime.step import StepRunner
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport.base import Outgoing, Transport
from mpnn_async.wire import encode_control

__all__ = ["JobFailedError", "JobResult", "JobRunner"]

log = logging.getLogger(__name__)


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
    recoveries: int = 0

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
        micro_batch_timeout_s: float | None = None,
        heartbeat_timeout_s: float = 5.0,
        max_recoveries: int = 10,
        resume: bool = False,
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
        self.max_recoveries = max_recoveries
        self.resume = resume
        self.progress = ProgressRecorder(self.model_store, job.name)
        self.channel = JobChannel(
            job=job.name,
            plan=self.plan,
            transport=transport,
            heartbeat_timeout_s=heartbeat_timeout_s,
            max_message_bytes=max_message_bytes,
        )
        self.steps = StepRunner(
            channel=self.channel,
            loss=self.spec.loss,
            micro_batch_rows=job.training.micro_batch_rows,
            in_flight=job.training.in_flight,
            micro_batch_timeout_s=micro_batch_timeout_s or step_timeout_s,
            step_timeout_s=step_timeout_s,
        )
        # Set when workers joined or a re-plan arrived: the next step persists, then they take effect.
        self._boundary_pending = False
        self.steps_done = 0
        self.recoveries = 0
        self.checkpoint: Checkpoint | None = None
        self._on_progress = on_progress
        self._samples = 0
        self._losses: dict[int, float] = {}
        self._evaluation: tuple[float, float | None] = (float("nan"), None)

    def __repr__(self) -> str:
        return (
            f"<JobRunner {self.job.name} plan={self.plan.plan_id} steps_done={self.steps_done} "
            f"generation={self.channel.generation} recoveries={self.recoveries}>"
        )

    @property
    def name(self) -> str:
        return self.job.name

    async def run(self) -> JobResult:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        if self.dataset is None:
            spec = DatasetSpec.from_dict(self.job.dataset)
            self.dataset = await loop.run_in_executor(None, lambda: load_dataset(spec, dtype=self.spec.np_dtype))
        self._check_dataset(self.dataset)
        self.checkpoint = await loop.run_in_executor(None, self._first_checkpoint)
        self.channel.set_generation(self.checkpoint.generation)
        if self.checkpoint.plan_id and self.checkpoint.plan_id != self.plan.plan_id:
            self._use_plan(Plan.from_dict(self.model_store.load_plan(self.checkpoint.plan_id)))
        log.info(
            "job.started job=%s plan=%s partitions=%s step=%d generation=%d resume=%s",
            self.name, self.plan.plan_id, ",".join(self.plan.partitions),
            self.checkpoint.step, self.checkpoint.generation, self.resume,
        )
        await self.channel.open()
        try:
            await self._load_checkpoint_on_partitions(self.checkpoint)
            await self._train_with_recovery()
            result = await self._finish(started)
        except BaseException as error:
            # Let the workers free the failed job's state; the original error matters more.
            with contextlib.suppress(Exception):
                await self.channel.publish_job_end()
            if isinstance(error, MpnnError):
                # A stopped scheduler leaves the job running for the next one, but a failed job is recorded as failed.
                with contextlib.suppress(Exception):
                    await self._publish_failed()
            raise
        finally:
            # Pool workers go back to the pool, so a job of another plan can use them.
            with contextlib.suppress(Exception):
                await release_pool_workers(self.transport, self.plan.partitions, self.channel.liveness, job=self.name)
            await self.channel.close()
        log.info("job.finished job=%s result=%s", self.name, result.to_dict())
        return result

    def _first_checkpoint(self) -> Checkpoint:
        """Return the checkpoint to start from: the stored one when resuming, else a new one."""
        stored = load_checkpoint(self.store, self.name)
        same_job = load_job_document(self.store, self.name) == self.job.to_dict()
        if self.resume and stored is not None and not stored.finished and same_job:
            log.info("job.resuming job=%s step=%d epoch=%d batch=%d", self.name, stored.step, stored.epoch, stored.batch)
            self.steps_done = stored.steps_done
            return dataclasses.replace(stored, generation=stored.generation + 1)
        generation = stored.generation + 1 if stored is not None else 0
        step = weights.prepare_partitions(self.model_store, self.plan)
        versions = {
            partition: self.store.latest_version(self.model_store.partition_key(partition)) or 0
            for partition in self.plan.partitions
        }
        checkpoint = Checkpoint(step=step, epoch=0, batch=0, steps_done=0, versions=versions, generation=generation)
        save_job_document(self.store, self.name, self.job.to_dict())
        save_checkpoint(self.store, self.name, checkpoint)
        return checkpoint

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

    async def _load_checkpoint_on_partitions(self, checkpoint: Checkpoint) -> None:
        hosts = await self._wait_for_hosts()
        await self.channel.start_partitions(
            workers=hosts,
            step=checkpoint.step,
            versions=checkpoint.versions,
            in_flight=self.job.training.in_flight,
            optimizer=self.job.optimizer.to_dict(),
            model=self.model_store.model,
            timeout_s=self.ready_timeout_s,
        )
        log.info(
            "job.partitions_ready job=%s generation=%d replicas=%s",
            self.name, self.channel.generation, self.channel.replicas.loaded,
        )

    async def _assign_pool_workers(self, reclaim: tuple[str, ...] = ()) -> None:
        """Give idle pool workers partitions of this plan (none when no pool worker is idle)."""
        try:
            await publish_assignments(
                self.transport, self.plan.partitions, self.channel.liveness, job=self.name, reclaim=reclaim
            )
        except TransportError as error:
            log.warning("pool.assign_failed job=%s error=%s", self.name, error)

    async def _wait_for_hosts(self, reclaim: tuple[str, ...] = ()) -> dict[str, list[str]]:
        """Wait until every partition has a live worker, assigning pool workers as they appear."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            await self._assign_pool_workers(reclaim)
            try:
                return await self.channel.wait_for_live_workers(min(1.0, max(deadline - time.monotonic(), 0.0)))
            except NoLiveWorkerError as error:
                if time.monotonic() > deadline:
                    raise NoLiveWorkerError(
                        f"job {self.name}: partitions {error.partitions} have had no live worker for "
                        f"{self.ready_timeout_s:.0f} s; start `mpnn worker --partition NAME` for each, or "
                        "pool workers (`mpnn worker` without --partition) for the scheduler to assign",
                        error.partitions,
                    ) from None

    # -- recovery --------------------------------------------------------------------------

    async def _train_with_recovery(self) -> None:
        assert self.checkpoint is not None
        problem = ""
        while True:
            try:
                if problem:
                    await self._recover(problem)
                await self._train_from(self.checkpoint)
                return
            except RecoveryNeeded as error:
                problem = str(error)
            except TransportError as error:
                # A publish cut off by a lost broker connection may or may not have
                # arrived, so the job rolls back. Waiting one heartbeat timeout first
                # lets the workers that have not reconnected yet count as lost.
                problem = f"lost the broker connection: {error}"
                await asyncio.sleep(self.channel.liveness.timeout_s)

    async def _recover(self, problem: str) -> None:
        """Roll every partition back to the last checkpoint under a new generation."""
        assert self.checkpoint is not None
        self.recoveries += 1
        if self.recoveries > self.max_recoveries:
            raise JobFailedError(f"job {self.name}: gave up after {self.max_recoveries} recoveries; last problem: {problem}")
        self.channel.forget_generation()
        self.channel.set_generation(self.channel.generation + 1)
        log.warning(
            "job.recovering job=%s problem=%s generation=%d checkpoint_step=%d",
            self.name, problem, self.channel.generation, self.checkpoint.step,
        )
        await self._load_checkpoint_on_partitions(self.checkpoint)
        self.steps_done = self.checkpoint.steps_done

    # -- training --------------------------------------------------------------------------

    async def _train_from(self, checkpoint: Checkpoint) -> None:
        assert self.dataset is not None
        training = self.job.training
        step = checkpoint.step
        for epoch in range(checkpoint.epoch, training.epochs):
            first_batch = checkpoint.batch if epoch == checkpoint.epoch else 0
            step, epoch_steps = await self._run_epoch(epoch, first_batch, step)
            test_loss, accuracy = await self._evaluate(step)
            self._evaluation = (test_loss, accuracy)
            await self._publish_progress(
                ProgressEvent(
                    job=self.name,
                    epoch=epoch,
                    step=step,
                    loss=self._mean_loss(epoch_steps),
                    test_loss=test_loss,
                    accuracy=accuracy,
                    total_steps=self._total_steps(),
                )
            )
            self._last_epoch_steps = epoch_steps
            if self._reached_max_steps():
                return

    async def _run_epoch(self, epoch: int, first_batch: int, step: int) -> tuple[int, list[int]]:
        """Run the batches of one epoch from `first_batch`; return the next step and the steps run."""
        assert self.dataset is not None
        training = self.job.training
        batches = epoch_batches(self.dataset.x_train.shape[0], training.batch_rows, seed=training.seed, epoch=epoch)
        first_step = step - first_batch
        for batch_index in range(first_batch, len(batches)):
            if self._reached_max_steps():
                break
            indices = batches[batch_index]
            step_started = time.monotonic()
            is_last = self.steps_done + 1 == training.max_steps or (
                epoch == training.epochs - 1 and batch_index == len(batches) - 1
            )
            persist = (
                is_last
                or (self.steps_done + 1) % training.persist_every_steps == 0
                or self._boundary_pending
                or self._membership_changed()
            )
            loss, versions = await self._run_step(
                step, self.dataset.x_train[indices], self.dataset.y_train[indices], persist=persist
            )
            step += 1
            self.steps_done += 1
            self._samples += len(indices)
            self._losses[step] = loss
            if persist:
                await self._save_checkpoint(
                    Checkpoint(
                        step=step,
                        epoch=epoch,
                        batch=batch_index + 1,
                        steps_done=self.steps_done,
                        versions=versions,
                        generation=self.channel.generation,
                        plan_id=self.plan.plan_id,
                    )
                )
                await self._at_boundary(step, versions)
            elapsed_s = time.monotonic() - step_started
            await self._publish_progress(
                ProgressEvent(
                    job=self.name,
                    epoch=epoch,
                    step=step,
                    loss=loss,
                    samples_per_s=len(indices) / elapsed_s if elapsed_s > 0 else 0.0,
                    total_steps=self._total_steps(),
                )
            )
        return step, list(range(first_step + 1, step + 1))

    async def _run_step(
        self, step: int, inputs: np.ndarray, labels: np.ndarray, *, persist: bool
    ) -> tuple[float, dict[str, int]]:
        """Run one synchronous step; return its loss and each partition's store version after it."""
        outcome = await self.steps.run(step, inputs, self._targets(labels), persist=persist)
        return outcome.loss, outcome.versions

    # -- step boundaries -------------------------------------------------------------------

    def _membership_changed(self) -> bool:
        """Return whether a re-plan waits or live workers host a partition of the plan they have not loaded."""
        if self.channel.replans:
            self._boundary_pending = True
            return True
        loaded = self.channel.replicas.loaded
        for partition, workers in self.channel.live_hosts().items():
            if set(workers) - set(loaded[partition]):
                return True
        return False

    async def _at_boundary(self, step: int, versions: dict[str, int]) -> None:
        """After a persisted step: switch to a requested plan, then let new replicas load the weights."""
        self._boundary_pending = False
        if self.channel.replans:
            await self._replan(self.channel.replans.pop(), step)
            self.channel.replans.clear()
            return
        await self._assign_pool_workers()
        hosts = self.channel.live_hosts()
        loaded = self.channel.replicas.loaded
        if all(set(hosts[partition]) <= set(loaded[partition]) for partition in hosts):
            return
        members = {partition: sorted(set(hosts[partition]) | set(self.channel.replicas.live(partition))) for partition in hosts}
        log.info("job.replicas_changed job=%s step=%d replicas=%s", self.name, step, members)
        await self._start_at(step, versions, members)

    async def _start_at(self, step: int, versions: dict[str, int], members: dict[str, list[str]]) -> None:
        await self.channel.start_partitions(
            workers=members,
            step=step,
            versions=versions,
            in_flight=self.job.training.in_flight,
            optimizer=self.job.optimizer.to_dict(),
            model=self.model_store.model,
            timeout_s=self.ready_timeout_s,
        )

    async def _replan(self, plan_table: dict[str, Any], step: int) -> None:
        """Re-cut the persisted weights into a new plan and restart every partition on it."""
        try:
            new_plan = build_plan(self.spec, plan_table)
        except MpnnError as error:
            log.error("job.replan_rejected job=%s error=%s", self.name, error)
            return
        old_partitions = set(self.plan.partitions)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, weights.prepare_partitions, self.model_store, new_plan)
        # The old plan's replicas drop their state; the new plan starts under a new generation.
        await self.channel.publish_job_end()
        self._use_plan(new_plan)
        self.channel.set_generation(self.channel.generation + 1)
        hosts = await self._wait_for_hosts(reclaim=tuple(sorted(old_partitions - set(new_plan.partitions))))
        versions = {
            partition: self.store.latest_version(self.model_store.partition_key(partition)) or 0
            for partition in new_plan.partitions
        }
        log.info("job.replanned job=%s step=%d plan=%s partitions=%s", self.name, step, new_plan.plan_id, list(new_plan.partitions))
        await self._start_at(step, versions, hosts)
        assert self.checkpoint is not None
        await self._save_checkpoint(
            dataclasses.replace(
                self.checkpoint, versions=versions, generation=self.channel.generation, plan_id=new_plan.plan_id
            )
        )

    def _use_plan(self, plan: Plan) -> None:
        self.plan = plan
        self.channel.use_plan(plan)

    async def _save_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        await asyncio.get_running_loop().run_in_executor(None, save_checkpoint, self.store, self.name, checkpoint)

    def _targets(self, labels: np.ndarray) -> np.ndarray:
        if self.spec.loss is Loss.SOFTMAX_CROSS_ENTROPY:
            return labels
        outputs = self.spec.width(self.spec.depth)
        targets: np.ndarray = np.eye(outputs, dtype=self.spec.np_dtype)[labels]
        return targets

    async def _evaluate(self, step: int) -> tuple[float, float | None]:
        """Run the test split forward through the workers; return (loss, accuracy)."""
        assert self.dataset is not None
        x_test, y_test = self.dataset.x_test, self.dataset.y_test
        if x_test.shape[0] == 0:
            return float("nan"), None
        rows = max(self.job.training.batch_rows, 256)
        window = asyncio.Semaphore(self.job.training.in_flight)

        async def run_block(index: int, start: int) -> np.ndarray:
            async with window:
                return await self.steps.forward_only(step, index, x_test[start : start + rows])

        outputs = np.concatenate(
            await asyncio.gather(*(run_block(i, start) for i, start in enumerate(range(0, x_test.shape[0], rows))))
        )
        loss, _ = loss_and_gradient(self.spec.loss, outputs, self._targets(y_test))
        accuracy = float(np.mean(outputs.argmax(axis=1) == y_test))
        log.info("job.evaluated job=%s step=%d test_loss=%.4f accuracy=%.4f", self.name, step, loss, accuracy)
        return loss, accuracy

    # -- bookkeeping -----------------------------------------------------------------------

    def _reached_max_steps(self) -> bool:
        max_steps = self.job.training.max_steps
        return bool(max_steps) and self.steps_done >= max_steps

    def _mean_loss(self, steps: list[int]) -> float:
        known = [self._losses[step] for step in steps if step in self._losses]
        return float(np.mean(known)) if known else float("nan")

    def _total_steps(self) -> int:
        assert self.dataset is not None
        training = self.job.training
        per_epoch = -(-int(self.dataset.x_train.shape[0]) // training.batch_rows)
        total = per_epoch * training.epochs
        return min(total, training.max_steps) if training.max_steps else total

    async def _finish(self, started: float) -> JobResult:
        assert self.checkpoint is not None
        test_loss, accuracy = self._evaluation
        train_loss = self._mean_loss(getattr(self, "_last_epoch_steps", []))
        step = self.checkpoint.step
        await self._save_checkpoint(dataclasses.replace(self.checkpoint, finished=True))
        self._note_workers()
        await self._publish_progress(
            ProgressEvent(
                job=self.name,
                epoch=self.checkpoint.epoch,
                step=step,
                loss=train_loss,
                test_loss=test_loss,
                accuracy=accuracy,
                total_steps=self._total_steps(),
                state="finished",
            )
        )
        await self.channel.publish_job_end()
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
            recoveries=self.recoveries,
        )

    async def _publish_failed(self) -> None:
        step = self.checkpoint.step if self.checkpoint is not None else 0
        epoch = self.checkpoint.epoch if self.checkpoint is not None else 0
        await self._publish_progress(
            ProgressEvent(
                job=self.name, epoch=epoch, step=step, loss=float("nan"),
                total_steps=self._total_steps(), state="failed",
            )
        )

    def _note_workers(self) -> None:
        """Copy who serves each partition, and the stragglers, into the progress record."""
        self.progress.workers = dict(self.channel.workers)
        self.progress.replicas = {partition: list(workers) for partition, workers in self.channel.replicas.loaded.items()}
        self.progress.stragglers = sorted(self.channel.replicas.stragglers)

    async def _publish_progress(self, event: ProgressEvent) -> None:
        """Record an event in the store, publish it on `<job>.progress`, hand it to the callback."""
        self._note_workers()
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
