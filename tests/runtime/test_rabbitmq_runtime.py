"""The runtime over the real RabbitMQ broker, with workers as separate `mpnn worker` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mpnn_async.planning import Plan
from mpnn_async.runtime import weights
from mpnn_async.runtime.progress import read_progress
from mpnn_async.runtime.reference_run import train_reference
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport.base import REJECT_DETAIL_HEADER, REJECT_REASON_HEADER, Outgoing
from mpnn_async.wire import BlockHeader, encode_block
from tests.runtime.jobs import PLANS, make_job, max_abs_difference, synthetic_dataset
from tests.runtime.processes import wait_until

pytestmark = pytest.mark.rabbitmq

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("strategy", sorted(PLANS))
async def test_worker_processes_match_reference(strategy, daemons, broker):
    job = make_job(f"rmq-{strategy}", PLANS[strategy])
    dataset = synthetic_dataset()
    store = Store.open(daemons.store)
    for partition in job.build_plan().partitions:
        daemons.worker(partition)

    result = await JobRunner(job=job, transport=broker, store=store, dataset=dataset, ready_timeout_s=60).run()

    reference = train_reference(job, dataset)
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert result.steps == 6
    assert max_abs_difference(distributed, reference.parameters) <= 1e-10


async def test_worker_processes_with_state_files_match_reference(daemons, broker, tmp_path):
    job = make_job("rmq-state-files", PLANS["percent"], optimizer={"kind": "adam", "learning_rate": 0.01})
    dataset = synthetic_dataset()
    store = Store.open(daemons.store)
    state_dir = tmp_path / "optimizer-state"
    state_dir.mkdir()
    for partition in job.build_plan().partitions:
        daemons.worker(partition, "--optimizer-state-dir", str(state_dir))

    result = await JobRunner(job=job, transport=broker, store=store, dataset=dataset, ready_timeout_s=60).run()

    reference = train_reference(job, dataset)
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert result.steps == 6
    assert max_abs_difference(distributed, reference.parameters) <= 1e-10
    stored = store.read(ModelStore(store, job.name).partition_key("a")).arrays
    assert {"W1.exp_avg", "W1.exp_avg_sq", "b3.exp_avg_sq"} <= set(stored)


async def test_malformed_message_dead_lettered_job_completes(daemons, broker, namespace):
    job = make_job("rmq-malformed", PLANS["mixed"])
    dataset = synthetic_dataset()
    store = Store.open(daemons.store)
    for partition in job.build_plan().partitions:
        daemons.worker(partition)
    runner = JobRunner(job=job, transport=broker, store=store, dataset=dataset, ready_timeout_s=60)
    dead = asyncio.Queue()

    async def on_dead(delivery):
        await dead.put(dict(delivery.headers))
        await delivery.ack()

    tag = await broker.consume(broker.dead_letter_queue, on_dead, prefetch=10)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)
    await broker.declare_queue("part.b", ["*.part.b"], durable=True)
    ghost = BlockHeader(kind="activation", job="ghost", step=0, micro_batch=0, layer=0,
                        source="scheduler", destination="b")
    await broker.publish_many([
        Outgoing("rmq-malformed.part.b", b"MPN1\xff\xff\xff\xffgarbage"),
        Outgoing("rmq-malformed.part.b", b'{"type": "step.apply", "job": 3}'),
        Outgoing("rmq-malformed.part.b", encode_block(ghost, np.zeros((2, 6)))),
    ])

    result = await asyncio.wait_for(task, timeout=120)
    dead_headers = [await asyncio.wait_for(dead.get(), 30) for _ in range(3)]
    await broker.cancel(tag)

    assert result.steps == 6
    reasons = sorted(headers[REJECT_REASON_HEADER] for headers in dead_headers)
    assert reasons == ["header_too_large", "invalid_field", "unknown_job"]
    assert all(headers[REJECT_DETAIL_HEADER] for headers in dead_headers)
    assert "message.rejected" in daemons.log("worker-b")


async def test_digits_job_over_rabbitmq(daemons, broker, tmp_path):
    config = tmp_path / "digits.toml"
    shutil.copy(ROOT / "configs" / "digits.toml", config)
    daemons.start("scheduler", "scheduler")
    for partition in ("a", "b", "c"):
        daemons.worker(partition)

    submitted = daemons.run("submit", str(config))
    assert submitted.returncode == 0, submitted.stderr

    store = Store.open(daemons.store)
    progress = await asyncio.to_thread(
        wait_until,
        lambda: (p := read_progress(store, "digits")) and p["state"] == "finished" and p,
        timeout_s=300,
        what="the digits job to finish",
        interval_s=0.5,
        details=lambda: daemons.log("scheduler")[-3000:],
    )
    assert progress["accuracy"] >= 0.95
    plan_ids = ModelStore(store, "digits").list_plans()
    assert len(plan_ids) == 1
    plan = Plan.from_dict(ModelStore(store, "digits").load_plan(plan_ids[0]))
    parameters = weights.load_parameters(ModelStore(store, "digits"), plan)
    assert [w.shape for w, _ in parameters] == [(128, 64), (64, 128), (10, 64)]
    assert all(np.isfinite(w).all() for w, _ in parameters)


async def test_bad_job_file_rejected_naming_field(daemons, tmp_path):
    bad = tmp_path / "bad.toml"
    text = (ROOT / "configs" / "digits.toml").read_text()
    bad.write_text(text.replace('activation = "relu"', 'activation = "relux"', 1))

    submitted = daemons.run("submit", str(bad))

    assert submitted.returncode == 3
    assert "model.layers[0].activation" in submitted.stderr


async def test_worker_exits_zero_on_sigterm(daemons):
    daemons.worker("a")
    await asyncio.to_thread(
        wait_until, lambda: "worker.started" in daemons.log("worker-a"), timeout_s=30,
        what="worker start", details=lambda: daemons.log("worker-a"),
    )

    assert await asyncio.to_thread(daemons.stop, "worker-a") == 0
    assert "worker.stopped" in daemons.log("worker-a")


async def test_worker_sigterm_mid_job_exits_zero(daemons, broker):
    job = make_job("rmq-sigterm", PLANS["count"], epochs=50)
    dataset = synthetic_dataset()
    store = Store.open(daemons.store)
    for partition in job.build_plan().partitions:
        daemons.worker(partition)
    steps = asyncio.Queue()
    runner = JobRunner(
        job=job, transport=broker, store=store, dataset=dataset, ready_timeout_s=60,
        step_timeout_s=30, on_progress=lambda event: steps.put_nowait(event.step),
    )
    task = asyncio.create_task(runner.run())
    try:
        while await asyncio.wait_for(steps.get(), 60) < 3:
            pass
        exit_code = await asyncio.to_thread(daemons.stop, "worker-b")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    assert exit_code == 0
    log = daemons.log("worker-b")
    assert "worker.stopping" in log
    assert "worker.stopped" in log


async def test_status_lists_live_workers(daemons):
    daemons.worker("a")
    daemons.worker("b", name="worker-b-one")
    daemons.worker("b", name="worker-b-two")
    for name in ("worker-a", "worker-b-one", "worker-b-two"):
        await asyncio.to_thread(
            wait_until, lambda name=name: "worker.started" in daemons.log(name), timeout_s=30,
            what=f"{name} to start", details=lambda name=name: daemons.log(name),
        )

    completed = await asyncio.to_thread(daemons.run, "status", "--listen", "2.5", "--json")

    assert completed.returncode == 0, completed.stderr
    census = json.loads(completed.stdout)["workers"]
    assert len(census["workers"]) == 3
    assert all(worker["last_heartbeat_s_ago"] < 2.5 for worker in census["workers"])
    by_partition = {entry["partition"]: entry for entry in census["partitions"]}
    assert by_partition["a"] == {"partition": "a", "workers": 1, "queue_depth": 0}
    assert by_partition["b"]["workers"] == 2
    assert all(worker["pool"] is False for worker in census["workers"])
    own_queues = sorted(tuple(worker["queue_depths"].items()) for worker in census["workers"])
    assert own_queues == [(("a", 0),), (("b", 0),), (("b", 0),)]
