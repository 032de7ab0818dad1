"""One synchronous training step over the replicas, with the micro-batch as the unit of retry.

Each micro-batch runs on a route (one replica per partition). An attempt that
loses a worker of its route, or misses its deadline, is run again under a new
attempt number on a new route; receivers drop the blocks of the older attempt.
Before the optimizer step, every micro-batch whose gradients live on a worker
that is gone is run again too. The step's ledger then names, per partition and
micro-batch, the one replica whose gradient counts, so a late result of a
straggler is never applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, TypeVar

import numpy as np

from mpnn_async.data.batching import split_micro_batches
from mpnn_async.model.losses import Loss, loss_and_gradient
from mpnn_async.runtime.pipeline import JobChannel, RecoveryNeeded, RouteFailed
from mpnn_async.runtime.routing import NoLiveReplica, Route
from mpnn_async.wire import MessageKind

__all__ = ["StepOutcome", "StepRunner"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class StepOutcome:
    """Loss and store versions of one applied step."""

    def __init__(self, loss: float, versions: dict[str, int]) -> None:
        self.loss = loss
        self.versions = versions


class StepRunner:
    """Runs the micro-batches of a step on routes, retries them, and commands the optimizer step."""

    def __init__(
        self,
        *,
        channel: JobChannel,
        loss: Loss,
        micro_batch_rows: int,
        in_flight: int,
        micro_batch_timeout_s: float,
        step_timeout_s: float,
        max_retries: int = 5,
    ) -> None:
        self.channel = channel
        self.loss = loss
        self.micro_batch_rows = micro_batch_rows
        self.in_flight = in_flight
        self.micro_batch_timeout_s = micro_batch_timeout_s
        self.step_timeout_s = step_timeout_s
        self.max_retries = max_retries
        self.retries = 0

    async def run(
        self, step: int, inputs: np.ndarray, targets: np.ndarray, *, persist: bool
    ) -> StepOutcome:
        rows = inputs.shape[0]
        slices = split_micro_batches(rows, self.micro_batch_rows)
        window = asyncio.Semaphore(self.in_flight)
        ledger: dict[int, Route] = {}
        losses: dict[int, float] = {}

        async def run_one(micro_batch: int) -> None:
            async with window:
                part = slices[micro_batch]
                losses[micro_batch], ledger[micro_batch] = await self._train_micro_batch(
                    step, micro_batch, inputs[part], targets[part], rows
                )

        await _gather_or_cancel([run_one(index) for index in range(len(slices))])
        # Gradients held by a worker that is gone are lost with it: run those micro-batches again.
        while stale := self._stale(ledger):
            log.warning("step.rerun job=%s step=%d micro_batches=%s", self.channel.job, step, stale)
            await _gather_or_cancel([run_one(index) for index in stale])
        self.channel.replicas.report_stragglers(self.channel.job, step)
        holders = {
            partition: [self.channel.replicas.holder(ledger[index], partition) for index in range(len(slices))]
            for partition in self.channel.plan.partitions
        }
        versions = await self.channel.apply_step(
            step=step, micro_batches=len(slices), persist=persist, holders=holders, timeout_s=self.step_timeout_s
        )
        return StepOutcome(float(sum(losses[index] for index in range(len(slices)))), versions)

    def _stale(self, ledger: dict[int, Route]) -> list[int]:
        replicas = self.channel.replicas
        loaded = replicas.loaded
        plan = self.channel.plan
        stale = []
        for micro_batch, route in sorted(ledger.items()):
            for partition, worker in zip(plan.partitions, route):
                if worker not in loaded[partition] or replicas.liveness.is_lost(worker):
                    stale.append(micro_batch)
                    break
        return stale

    async def _train_micro_batch(
        self, step: int, micro_batch: int, inputs: np.ndarray, targets: np.ndarray, rows: int
    ) -> tuple[float, Route]:
        channel = self.channel

        async def attempt_once(attempt: int, route: Route) -> float:
            outputs = await channel.forward(
                MessageKind.ACTIVATION, step, micro_batch, inputs,
                attempt=attempt, route=route, timeout_s=self.micro_batch_timeout_s,
            )
            loss, gradient = loss_and_gradient(self.loss, outputs, targets, batch_rows=rows)
            await channel.send_output_gradient(step, micro_batch, gradient, attempt=attempt, route=route)
            await channel.wait(
                ("mb_done", attempt, step, micro_batch),
                self.micro_batch_timeout_s,
                f"the backward pass of step {step} micro-batch {micro_batch}",
                route=route,
            )
            return loss

        return await self.with_retries(step, micro_batch, attempt_once)

    async def forward_only(self, step: int, index: int, inputs: np.ndarray) -> np.ndarray:
        """Run an evaluation block forward on a route, with the same retries as training."""

        async def attempt_once(attempt: int, route: Route) -> np.ndarray:
            return await self.channel.forward(
                MessageKind.INFERENCE, step, index, inputs,
                attempt=attempt, route=route, timeout_s=self.micro_batch_timeout_s,
            )

        result, _ = await self.with_retries(step, index, attempt_once)
        return result

    async def with_retries(
        self, step: int, micro_batch: int, attempt_once: Callable[[int, Route], Awaitable[T]]
    ) -> tuple[T, Route]:
        """Run `attempt_once` on fresh routes until it succeeds; return its result and route."""
        replicas = self.channel.replicas
        avoid: set[tuple[str, str]] = set()
        for retry in range(self.max_retries + 1):
            attempt = self.channel.new_attempt()
            try:
                route = replicas.pick(micro_batch, avoid=avoid)
            except NoLiveReplica as error:
                raise RecoveryNeeded(str(error)) from None
            replicas.begin(route)
            started = time.monotonic()
            try:
                result = await attempt_once(attempt, route)
            except RouteFailed as failure:
                replicas.end(route)
                self.retries += 1
                if failure.lost:
                    for worker in failure.workers:
                        log.warning("replica.dropped job=%s worker=%s reason=heartbeat_lost", self.channel.job, worker)
                        replicas.drop(worker)
                else:
                    # Which worker is late is unknown: the next attempt takes another replica wherever one is live.
                    avoid |= set(zip(self.channel.plan.partitions, route, strict=True))
                log.warning(
                    "micro_batch.retry job=%s step=%d mb=%d attempt=%d retry=%d problem=%s",
                    self.channel.job, step, micro_batch, attempt, retry + 1, failure,
                )
                continue
            replicas.end(route, time.monotonic() - started)
            return result, route
        raise RecoveryNeeded(f"micro-batch {micro_batch} of step {step} failed {self.max_retries + 1} attempts")


async def _gather_or_cancel(coroutines: list[Awaitable[None]]) -> None:
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
