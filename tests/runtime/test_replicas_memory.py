"""Replicas, the worker pool, retries and re-planning on the in-process transport.

Every run is compared with a single-process reference or with a run that has
one worker per partition: replicas and retries must never change the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import numpy as np
import pytest

from mpnn_async.planning import build_plan
from mpnn_async.runtime import weights
from mpnn_async.runtime.checkpoint import load_checkpoint
from mpnn_async.runtime.progress import read_progress
from mpnn_async.runtime.protocol import ControlType, control, scheduler_routing_key
from mpnn_async.runtime.reference_run import train_reference
from mpnn_async.runtime.pipeline import JobFailedError
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.runtime.worker import Worker
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Delivery, Outgoing
from tests.runtime.jobs import PLANS, make_job, max_abs_difference, synthetic_dataset


def assert_bit_identical(left, right) -> None:
    for layer, ((w1, b1), (w2, b2)) in enumerate(zip(left, right, strict=True), start=1):
        assert np.array_equal(w1, w2), f"weights of layer {layer} differ"
        assert np.array_equal(b1, b2), f"biases of layer {layer} differ"


@contextlib.asynccontextmanager
async def workers_running(namespace: str, store: Store, layout: dict[str, tuple[str, ...]], **options: Any):
    """Start one Worker per entry of `layout` (worker id -> partitions), each on its own transport."""
    started = []
    try:
        for worker_id, partitions in layout.items():
            transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
            worker = Worker(
                transport=transport, store=store, partitions=partitions, worker_id=worker_id, heartbeat_s=0.1
            )
            await worker.start()
            started.append((worker, transport))
        yield {worker.worker_id: worker for worker, _ in started}
    finally:
        for worker, transport in started:
            await worker.stop(timeout_s=5)
            await transport.close()


async def run_job(job, store, namespace, dataset, **runner_options: Any):
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    try:
        runner = JobRunner(job=job, transport=transport, store=store, dataset=dataset, **runner_options)
        return await runner.run(), runner
    finally:
        await transport.close()


async def started_job(job, store, transport, dataset, *, until_step: int, **runner_options: Any):
    """Start `job` in a task; return its runner and task once step `until_step` is done."""
    steps: asyncio.Queue[int] = asyncio.Queue()
    runner = JobRunner(
        job=job, transport=transport, store=store, dataset=dataset,
        on_progress=lambda event: steps.put_nowait(event.step), **runner_options,
    )
    task = asyncio.create_task(runner.run())
    while await asyncio.wait_for(steps.get(), 30) < until_step:
        pass
    return runner, task


def stored_weights(store, job, plan=None):
    return weights.load_parameters(ModelStore(store, job.training.store_model), plan or job.build_plan())


async def single_worker_weights(job, tmp_path, namespace, dataset):
    store = Store.open(tmp_path / "single", create=True)
    layout = {"solo": tuple(job.build_plan().partitions)}
    async with workers_running(f"{namespace}-single", store, layout):
        await run_job(job, store, f"{namespace}-single", dataset)
    return stored_weights(store, job)


async def test_replicas_bit_identical_to_one_worker(tmp_path, namespace):
    job = make_job("replicated", PLANS["count"], epochs=3, batch_rows=8, micro_batch_rows=2, in_flight=4)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path / "replicas", create=True)
    layout = {"w-ac": ("a", "c"), "w-b1": ("b",), "w-b2": ("b",), "w-c2": ("c",)}

    async with workers_running(namespace, store, layout) as workers:
        await asyncio.sleep(0.3)  # every worker's first heartbeat, so the job starts with all replicas
        result, runner = await run_job(job, store, namespace, dataset)
        received = {worker_id: worker.counters["received"] for worker_id, worker in workers.items()}

    assert result.steps == 9
    assert runner.channel.replicas.loaded["b"] == ["w-b1", "w-b2"]
    assert read_progress(store, job.name)["replicas"]["b"] == ["w-b1", "w-b2"]
    assert received["w-b1"] > 0
    assert received["w-b2"] > 0
    assert received["w-c2"] > 0
    replicated = stored_weights(store, job)
    assert_bit_identical(replicated, await single_worker_weights(job, tmp_path, namespace, dataset))
    assert max_abs_difference(replicated, train_reference(job, dataset).parameters) <= 1e-10


async def test_pool_workers_assigned_partitions(tmp_path, namespace):
    job = make_job("pooled", PLANS["count"], epochs=2)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path, create=True)
    layout = {f"pool-{index}": () for index in range(4)}

    async with workers_running(namespace, store, layout) as workers:
        result, runner = await run_job(job, store, namespace, dataset, ready_timeout_s=20)
        loaded = runner.channel.replicas.loaded
        # At the end of the job the pool workers are released for jobs of other plans.
        for _ in range(50):
            if not any(worker.partitions for worker in workers.values()):
                break
            await asyncio.sleep(0.1)
        released = {worker_id: worker.partitions for worker_id, worker in workers.items()}

    assert result.steps == 6
    assert sorted(len(replicas) for replicas in loaded.values()) == [1, 1, 2]
    assert sorted(worker for replicas in loaded.values() for worker in replicas) == sorted(layout)
    assert released == {worker_id: () for worker_id in layout}
    distributed = stored_weights(store, job)
    assert max_abs_difference(distributed, train_reference(job, dataset).parameters) <= 1e-10


async def test_worker_joining_mid_job_becomes_replica(tmp_path, namespace):
    job = make_job("joined", PLANS["count"], epochs=3, persist_every_steps=4)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path / "joined", create=True)
    layout = {"w-abc": ("a", "b", "c")}

    async with workers_running(namespace, store, layout):
        transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
        runner, task = await started_job(job, store, transport, dataset, until_step=1)
        async with workers_running(namespace, store, {"pool-late": ()}) as late:
            result = await asyncio.wait_for(task, 60)
            late_worker = late["pool-late"]
            assert late_worker.partitions == ("a",)
            assert late_worker.counters["received"] > 0
        await transport.close()

    assert result.steps == 9
    assert_bit_identical(stored_weights(store, job), await single_worker_weights(job, tmp_path, namespace, dataset))


class SlowDeliveries:
    """Wraps a transport so that every delivery to this worker's handlers waits `delay_s` first."""

    def __init__(self, inner, delay_s: float) -> None:
        self._inner = inner
        self._delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def consume(self, full_name: str, handler, *, prefetch: int) -> str:
        async def slow(delivery: Delivery) -> None:
            await asyncio.sleep(self._delay_s)
            await handler(delivery)

        return await self._inner.consume(full_name, slow, prefetch=prefetch)


async def test_straggler_micro_batches_retried_elsewhere(tmp_path, namespace, caplog):
    job = make_job("straggler", PLANS["count"], epochs=1, micro_batch_rows=4, in_flight=2)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path / "straggler", create=True)

    async with workers_running(namespace, store, {"w-abc": ("a", "b", "c")}):
        inner = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
        slow = Worker(transport=SlowDeliveries(inner, 0.6), store=store, partitions=("b",), worker_id="w-slow", heartbeat_s=0.1)
        await slow.start()
        try:
            await asyncio.sleep(0.3)
            with caplog.at_level(logging.WARNING, logger="mpnn_async.runtime"):
                result, runner = await run_job(job, store, namespace, dataset, micro_batch_timeout_s=0.4)
        finally:
            await slow.stop(timeout_s=10)
            await inner.close()

    assert result.steps == 3
    assert runner.steps.retries > 0
    assert "micro_batch.retry" in caplog.text
    assert_bit_identical(stored_weights(store, job), await single_worker_weights(job, tmp_path, namespace, dataset))


async def test_replan_mid_job_continues_exactly(tmp_path, namespace):
    job = make_job("replanned", PLANS["count"], epochs=3, persist_every_steps=3)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path, create=True)
    new_table = PLANS["percent"]
    new_plan = build_plan(job.model, new_table)

    async with workers_running(namespace, store, {"w-abc": ("a", "b", "c")}):
        transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
        runner, task = await started_job(job, store, transport, dataset, until_step=1)
        body = control(ControlType.JOB_REPLAN, job=job.name, plan=new_table)
        await transport.publish(Outgoing(scheduler_routing_key(job.name), body))
        result = await asyncio.wait_for(task, 60)
        await transport.close()

    assert result.steps == 9
    assert result.plan_id == new_plan.plan_id
    assert load_checkpoint(store, job.name).plan_id == new_plan.plan_id
    distributed = stored_weights(store, job, new_plan)
    assert max_abs_difference(distributed, train_reference(job, dataset).parameters) <= 1e-10


async def test_replan_with_invalid_plan_is_ignored(tmp_path, namespace, caplog):
    job = make_job("bad-replan", PLANS["count"], epochs=2, persist_every_steps=2)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path, create=True)
    bad_table = {"partitions": ["a"], "layers": [{"layers": [1], "strategy": "count", "counts": {"a": 99}}]}

    async with workers_running(namespace, store, {"w-abc": ("a", "b", "c")}):
        transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
        runner, task = await started_job(job, store, transport, dataset, until_step=1)
        body = control(ControlType.JOB_REPLAN, job=job.name, plan=bad_table)
        with caplog.at_level(logging.ERROR, logger="mpnn_async.runtime"):
            await transport.publish(Outgoing(scheduler_routing_key(job.name), body))
            result = await asyncio.wait_for(task, 60)
        await transport.close()

    assert result.plan_id == job.build_plan().plan_id
    assert "job.replan_rejected" in caplog.text
    distributed = stored_weights(store, job)
    assert max_abs_difference(distributed, train_reference(job, dataset).parameters) <= 1e-10


async def test_lost_pool_worker_replaced_from_pool(tmp_path, namespace):
    job = make_job("replaced", PLANS["count"], epochs=3, persist_every_steps=2)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path / "replaced", create=True)
    layout = {f"pool-{index}": () for index in range(3)}

    async with workers_running(namespace, store, layout) as workers:
        transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
        runner, task = await started_job(job, store, transport, dataset, until_step=3, heartbeat_timeout_s=0.5)
        lost = next(worker for worker in workers.values() if worker.partitions == ("b",))
        await lost.stop(timeout_s=5)
        async with workers_running(namespace, store, {"pool-new": ()}) as new:
            result = await asyncio.wait_for(task, 60)
            assert new["pool-new"].partitions == ("b",)
        await transport.close()

    assert result.steps == 9
    assert result.recoveries >= 1
    assert runner.channel.replicas.loaded["b"] == ["pool-new"]
    assert_bit_identical(stored_weights(store, job), await single_worker_weights(job, tmp_path, namespace, dataset))


async def test_worker_unable_to_load_left_out(tmp_path, namespace, caplog):
    job = make_job("bad-store", PLANS["count"], epochs=2)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path / "store", create=True)
    wrong_store = Store.open(tmp_path / "wrong", create=True)

    async with workers_running(namespace, store, {"w-abc": ("a", "b", "c")}):
        async with workers_running(namespace, wrong_store, {"w-wrong": ("b",)}):
            await asyncio.sleep(0.3)
            with caplog.at_level(logging.ERROR, logger="mpnn_async.runtime"):
                result, runner = await run_job(job, store, namespace, dataset)

    assert result.steps == 6
    assert "replica.rejected" in caplog.text
    assert "w-wrong" in runner.channel.rejected
    assert runner.channel.replicas.loaded["b"] == ["w-abc"]
    assert_bit_identical(stored_weights(store, job), await single_worker_weights(job, tmp_path, namespace, dataset))


async def test_duplicate_worker_ids_fail_job_loudly(tmp_path, namespace):
    job = make_job("dup-ids", PLANS["count"], epochs=2)
    store = Store.open(tmp_path, create=True)
    first = {"dup": ("a", "b", "c")}

    async with workers_running(namespace, store, first), workers_running(namespace, store, first):
        with pytest.raises(JobFailedError, match="unique --worker-id"):
            await asyncio.wait_for(run_job(job, store, namespace, synthetic_dataset()), 30)

    assert read_progress(store, job.name)["state"] == "failed"
