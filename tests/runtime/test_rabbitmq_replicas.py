"""Replicas and the worker pool with real `mpnn worker` processes on the real broker."""

from __future__ import annotations

import asyncio
import time

import pytest

from mpnn_async.planning import Plan
from mpnn_async.runtime import weights
from mpnn_async.runtime.checkpoint import save_job_document
from mpnn_async.runtime.reference_run import train_reference
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.store import ModelStore, Store
from tests.runtime.jobs import PLANS, make_job, max_abs_difference, synthetic_dataset
from tests.runtime.processes import wait_until
from tests.runtime.test_rabbitmq_failures import assert_bit_identical, undisturbed_weights

pytestmark = pytest.mark.rabbitmq


def replica_job(name: str):
    return make_job(name, PLANS["count"], epochs=3, micro_batch_rows=2, in_flight=4, persist_every_steps=3)


def wait_for_log(daemons, name: str, text: str, timeout_s: float = 30) -> None:
    wait_until(
        lambda: text in daemons.log(name), timeout_s=timeout_s,
        what=f"{text!r} in the log of {name}", details=lambda: daemons.log(name)[-2000:],
    )


@pytest.mark.parametrize("kill_at_step", [1, 4])
async def test_killed_replica_job_identical(kill_at_step, daemons, broker, tmp_path, namespace):
    job = replica_job(f"replica-kill-{kill_at_step}")
    store = Store.open(daemons.store)
    daemons.worker("a", "--partition", "c", name="worker-ac")
    daemons.worker("b", "--worker-id", "b-first", name="worker-b1")
    daemons.worker("b", "--worker-id", "b-second", name="worker-b2")
    for name in ("worker-ac", "worker-b1", "worker-b2"):
        await asyncio.to_thread(wait_for_log, daemons, name, "worker.started")
    steps: asyncio.Queue[int] = asyncio.Queue()
    runner = JobRunner(
        job=job, transport=broker, store=store, dataset=synthetic_dataset(), ready_timeout_s=60,
        step_timeout_s=30, micro_batch_timeout_s=10, heartbeat_timeout_s=2,
        on_progress=lambda event: steps.put_nowait(event.step),
    )
    task = asyncio.create_task(runner.run())
    # A replica whose first heartbeat came after the job started joins at a step boundary.
    while True:
        step = await asyncio.wait_for(steps.get(), 60)
        if step >= kill_at_step and len(runner.channel.replicas.loaded["b"]) == 2:
            break

    assert await asyncio.to_thread(daemons.kill, "worker-b1") == -9
    result = await asyncio.wait_for(task, 180)

    assert result.steps == 9
    assert runner.steps.retries + result.recoveries >= 1
    assert runner.channel.replicas.loaded["b"] == ["b-second"]
    assert "job.started job=" + job.name in daemons.log("worker-b1")
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert_bit_identical(distributed, await undisturbed_weights(job, tmp_path, namespace))


async def test_pool_worker_processes_get_partitions(daemons, broker, tmp_path, namespace):
    job = replica_job("pool-processes")
    store = Store.open(daemons.store)
    for index in range(3):
        daemons.start(f"pool-{index}", "worker", "--worker-id", f"pool-{index}", "--shutdown-timeout", "10")
    for index in range(3):
        await asyncio.to_thread(wait_for_log, daemons, f"pool-{index}", "worker.started")
    runner = JobRunner(
        job=job, transport=broker, store=store, dataset=synthetic_dataset(), ready_timeout_s=60,
        step_timeout_s=30, heartbeat_timeout_s=3,
    )

    started = time.monotonic()
    task = asyncio.create_task(runner.run())
    for index in range(3):
        await asyncio.to_thread(wait_for_log, daemons, f"pool-{index}", "worker.assigned", 20)
    assigned_after_s = time.monotonic() - started
    result = await asyncio.wait_for(task, 180)

    assert assigned_after_s < 10
    assert result.steps == 9
    assert sorted(runner.channel.replicas.loaded) == ["a", "b", "c"]
    assert all(len(workers) == 1 for workers in runner.channel.replicas.loaded.values())
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert_bit_identical(distributed, await undisturbed_weights(job, tmp_path, namespace))


async def test_replan_command_moves_neurons_mid_job(daemons, broker, tmp_path):
    job = make_job("replan-cli", PLANS["count"], epochs=3, persist_every_steps=3)
    store = Store.open(daemons.store)
    for partition in job.build_plan().partitions:
        daemons.worker(partition)
    plan_file = tmp_path / "moved.toml"
    # Layer 2 moves from counts a:1, b:2, c:2 to one neuron for b and three for c.
    plan_file.write_text(
        '[plan]\npartitions = ["a", "b", "c"]\n'
        + '[[plan.layers]]\nlayers = [1]\nstrategy = "count"\ncounts = { a = 3, b = 2, c = 2 }\n'
        + '[[plan.layers]]\nlayers = [2]\nstrategy = "count"\ncounts = { a = 1, b = 1, c = 3 }\n'
        + '[[plan.layers]]\nlayers = [3]\nstrategy = "count"\ncounts = { a = 2, b = 1, c = 1 }\n'
    )
    steps: asyncio.Queue[int] = asyncio.Queue()
    dataset = synthetic_dataset()
    runner = JobRunner(
        job=job, transport=broker, store=store, dataset=dataset, ready_timeout_s=60,
        step_timeout_s=30, heartbeat_timeout_s=3, on_progress=lambda event: steps.put_nowait(event.step),
    )
    task = asyncio.create_task(runner.run())
    while await asyncio.wait_for(steps.get(), 60) < 1:
        pass

    sent = await asyncio.to_thread(daemons.run, "replan", job.name, str(plan_file))
    result = await asyncio.wait_for(task, 180)

    assert sent.returncode == 0, sent.stderr
    assert result.steps == 9
    assert result.plan_id != job.build_plan().plan_id
    moved = Plan.from_dict(ModelStore(store, job.name).load_plan(result.plan_id))
    assert [len(moved.neurons(p, 2)) for p in ("a", "b", "c")] == [1, 1, 3]
    distributed = weights.load_parameters(ModelStore(store, job.name), moved)
    assert max_abs_difference(distributed, train_reference(job, dataset).parameters) <= 1e-10


async def test_replan_command_rejects_plan_for_other_model(daemons, broker, tmp_path):
    job = make_job("replan-bad", PLANS["count"], epochs=1)
    store = Store.open(daemons.store)
    save_job_document(store, job.name, job.to_dict())
    plan_file = tmp_path / "bad.toml"
    plan_file.write_text('[plan]\npartitions = ["a"]\n[[plan.layers]]\nlayers = [9]\nstrategy = "whole"\npartition = "a"\n')

    completed = await asyncio.to_thread(daemons.run, "replan", job.name, str(plan_file))

    assert completed.returncode == 3
    assert "plan.layers" in completed.stderr
