"""Failures with real processes on the real broker: each run must end with the same weights
as an undisturbed run of the same job."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from mpnn_async.runtime import weights
from mpnn_async.runtime.checkpoint import load_checkpoint
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.protocol import JOBS_ROUTING_KEY
from mpnn_async.runtime.service import declare_jobs_queue
from mpnn_async.transport.base import Outgoing
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.runtime.worker import Worker
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport import open_transport
from tests.runtime.jobs import PLANS, make_job, synthetic_dataset
from tests.runtime.processes import wait_until

pytestmark = pytest.mark.rabbitmq

DEFAULT = object()


def failure_job(name: str):
    return make_job(name, PLANS["count"], epochs=3, persist_every_steps=1)


async def undisturbed_weights(job, tmp_path, namespace, *, dataset=DEFAULT):
    """Weights of the same job run in one process on the in-process transport."""
    store = Store.open(tmp_path / "undisturbed", create=True)
    transport = await open_transport(None, namespace=f"{namespace}-quiet", max_message_bytes=1 << 20)
    worker = Worker(transport=transport, store=store, partitions=job.build_plan().partitions)
    await worker.start()
    try:
        data = synthetic_dataset() if dataset is DEFAULT else dataset
        await JobRunner(job=job, transport=transport, store=store, dataset=data).run()
    finally:
        await worker.stop(timeout_s=5)
        await transport.close()
    return weights.load_parameters(ModelStore(store, job.name), job.build_plan())


def assert_bit_identical(left, right):
    for layer, ((w1, b1), (w2, b2)) in enumerate(zip(left, right, strict=True), start=1):
        assert np.array_equal(w1, w2), f"weights of layer {layer} differ"
        assert np.array_equal(b1, b2), f"biases of layer {layer} differ"


async def run_until_step(runner: JobRunner, steps: asyncio.Queue, kill_at_step: int) -> asyncio.Task:
    task = asyncio.create_task(runner.run())
    while True:
        step = await asyncio.wait_for(steps.get(), 60)
        if step >= kill_at_step:
            return task


@pytest.mark.parametrize("kill_at_step", [1, 4])
async def test_killed_worker_restarted_job_identical(kill_at_step, daemons, broker, tmp_path, namespace):
    job = failure_job(f"kill-{kill_at_step}")
    store = Store.open(daemons.store)
    for partition in job.build_plan().partitions:
        daemons.worker(partition)
    steps: asyncio.Queue[int] = asyncio.Queue()
    runner = JobRunner(
        job=job, transport=broker, store=store, dataset=synthetic_dataset(), ready_timeout_s=60,
        step_timeout_s=20, heartbeat_timeout_s=3, on_progress=lambda event: steps.put_nowait(event.step),
    )

    task = await run_until_step(runner, steps, kill_at_step)
    assert await asyncio.to_thread(daemons.kill, "worker-b") == -9
    daemons.worker("b", name="worker-b-restarted")
    result = await asyncio.wait_for(task, 180)

    assert result.recoveries >= 1
    assert result.steps == 9
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert_bit_identical(distributed, await undisturbed_weights(job, tmp_path, namespace))


def write_dataset(path):
    dataset = synthetic_dataset()
    x = np.concatenate([dataset.x_train, dataset.x_test])
    y = np.concatenate([dataset.y_train, dataset.y_test])
    np.savez(path, x=x, y=y)


def file_job(name: str, path) -> JobSpec:
    document = failure_job(name).to_dict()
    document["dataset"] = {"path": str(path), "format": "npz", "test_fraction": 0.25, "scale": "none"}
    return JobSpec.from_dict(document)


async def test_killed_scheduler_job_resumes_identically(daemons, broker, tmp_path, namespace):
    write_dataset(tmp_path / "data.npz")
    job = file_job("resume-me", tmp_path / "data.npz")
    store = Store.open(daemons.store)
    for partition in job.build_plan().partitions:
        daemons.worker(partition)
    daemons.start("scheduler", "scheduler")
    await declare_jobs_queue(broker)
    await broker.publish(Outgoing(JOBS_ROUTING_KEY, job.to_json()))

    await asyncio.to_thread(
        wait_until, lambda: (c := load_checkpoint(store, job.name)) and c.steps_done >= 3,
        timeout_s=60, what="3 steps of the job", details=lambda: daemons.log("scheduler")[-2000:],
    )
    assert await asyncio.to_thread(daemons.kill, "scheduler") == -9
    daemons.start("scheduler-2", "scheduler")
    checkpoint = await asyncio.to_thread(
        wait_until, lambda: (c := load_checkpoint(store, job.name)) and c.finished and c,
        timeout_s=180, what="the resumed job to finish", details=lambda: daemons.log("scheduler-2")[-2000:],
    )

    assert checkpoint.steps_done == 9
    assert "job.resuming" in daemons.log("scheduler-2")
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert_bit_identical(distributed, await undisturbed_weights(job, tmp_path, namespace, dataset=None))


async def test_mpnn_resume_finishes_interrupted_job(tmp_path, namespace):
    write_dataset(tmp_path / "data.npz")
    job = file_job("interrupted", tmp_path / "data.npz")
    store = Store.open(tmp_path / "store", create=True)
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    worker = Worker(transport=transport, store=store, partitions=job.build_plan().partitions)
    await worker.start()
    steps: asyncio.Queue[int] = asyncio.Queue()
    runner = JobRunner(job=job, transport=transport, store=store, on_progress=lambda e: steps.put_nowait(e.step))
    task = await run_until_step(runner, steps, 4)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await worker.stop(timeout_s=5)
    await transport.close()

    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mpnn_async", "resume", job.name, "--store", str(tmp_path / "store"), "--json"],
        capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    assert "resuming job interrupted from step" in completed.stderr
    assert load_checkpoint(store, job.name).finished
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert_bit_identical(distributed, await undisturbed_weights(job, tmp_path, namespace, dataset=None))


async def test_deleted_queue_is_fatal_for_worker(broker, tmp_path):
    store = Store.open(tmp_path, create=True)
    fatal = asyncio.Event()
    worker = Worker(
        transport=broker, store=store, partitions=("a",), heartbeat_s=0.2, on_fatal=lambda reason: fatal.set()
    )
    await worker.start()
    try:
        await broker.delete_queue(broker.queue_name("part.a"))
        await asyncio.wait_for(fatal.wait(), 10)
    finally:
        await worker.stop(timeout_s=5)

    assert "queue deleted" in worker.fatal_reason


async def test_worker_process_exits_loudly_without_queue(daemons, broker):
    daemons.worker("a")
    await asyncio.to_thread(
        wait_until, lambda: "worker.started" in daemons.log("worker-a"), timeout_s=30,
        what="worker start", details=lambda: daemons.log("worker-a"),
    )

    await broker.delete_queue(broker.queue_name("part.a"))
    process = daemons.processes.pop("worker-a")
    exit_code = await asyncio.to_thread(process.wait, 30)

    assert exit_code == 1
    assert "worker.fatal" in daemons.log("worker-a")
    assert "queue deleted" in daemons.log("worker-a")
