"""A connection lost after a step was applied but before its `step.apply` was acknowledged.

The broker delivers the command again after the reconnection. The worker
must recognise the step as applied and change nothing, so the job ends with
the weights of an undisturbed run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mpnn_async.runtime import weights
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.runtime.worker import Worker
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Delivery
from mpnn_async.wire import is_data_frame
from tests.runtime.jobs import PLANS, make_job, synthetic_dataset
from tests.runtime.test_rabbitmq_failures import assert_bit_identical, undisturbed_weights

pytestmark = pytest.mark.rabbitmq


class DropsConnectionInsteadOfAck:
    """A delivery whose `ack` cuts the worker's broker connection instead of acknowledging."""

    def __init__(self, inner: Delivery, cut: Any) -> None:
        self._inner = inner
        self._cut = cut

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def ack(self) -> None:
        await self._cut()


class LosesFirstStepAck:
    """Wraps the worker's transport: the first `step.apply` of step `step` is never acknowledged."""

    def __init__(self, inner, step: int) -> None:
        self._inner = inner
        self._step = step
        self.cut = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def _cut_connection(self) -> None:
        self.cut = True
        underlay = self._inner.connection.transport.connection
        await underlay.close(ConnectionError("test: connection lost before the ack"))

    async def consume(self, full_name: str, handler, *, prefetch: int) -> str:
        async def wrapped(delivery: Delivery) -> None:
            body = delivery.body
            is_target = (
                not self.cut
                and not is_data_frame(body)
                and b'"step.apply"' in body
                and f'"step":{self._step},'.encode() in body
            )
            await handler(DropsConnectionInsteadOfAck(delivery, self._cut_connection) if is_target else delivery)

        return await self._inner.consume(full_name, wrapped, prefetch=prefetch)


async def test_redelivered_step_apply_has_no_effect(broker, broker_url, namespace, tmp_path, caplog):
    job = make_job("lost-ack", PLANS["count"], epochs=3, persist_every_steps=1)
    store = Store.open(tmp_path / "store", create=True)
    inner = await open_transport(broker_url, namespace=namespace, max_message_bytes=1 << 24)
    transport = LosesFirstStepAck(inner, step=2)
    worker = Worker(transport=transport, store=store, partitions=job.build_plan().partitions, worker_id="lost-ack")
    await worker.start()
    try:
        with caplog.at_level(logging.INFO, logger="mpnn_async.runtime.worker"):
            runner = JobRunner(
                job=job, transport=broker, store=store, dataset=synthetic_dataset(), ready_timeout_s=60,
                step_timeout_s=30, micro_batch_timeout_s=10, heartbeat_timeout_s=5,
            )
            result = await asyncio.wait_for(runner.run(), 180)
    finally:
        await worker.stop(timeout_s=10)
        for queue in worker.queues:
            await broker.delete_queue(queue)
        await inner.close()

    assert transport.cut
    assert result.steps == 9
    assert "step.already_applied" in caplog.text
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert_bit_identical(distributed, await undisturbed_weights(job, tmp_path, namespace))
