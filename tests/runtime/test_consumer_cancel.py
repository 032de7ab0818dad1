"""A worker whose consumer the broker cancels while its queue still exists.

RabbitMQ sends basic.cancel to the consumers of a queue that is deleted. When
someone declares the queue again at once, the worker's queue check still
finds it, so the worker must consume it again by itself (aio-pika 10.2 and
later do this) instead of sitting idle. The test stops the worker with
SIGSTOP while the queue is replaced, so the worker handles the cancel only
once the new queue exists.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aio_pika
import pytest

from mpnn_async.runtime import weights
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.store import ModelStore, Store
from tests.runtime.jobs import PLANS, make_job, synthetic_dataset
from tests.runtime.processes import wait_until
from tests.runtime.test_rabbitmq_failures import (
    assert_bit_identical,
    run_until_step,
    undisturbed_weights,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


@pytest.fixture
def broker_url(private_broker):
    return private_broker.url


def replica_queue(node, namespace: str, partition: str) -> dict:
    """Return the `list_queues` row of the one worker's own queue for `partition`."""
    rows = [
        row
        for row in node.list("list_queues", "name", "durable", "auto_delete", "arguments")
        if row["name"].startswith(f"{namespace}.w.") and row["name"].endswith(f".{partition}")
    ]
    assert len(rows) == 1, f"expected one replica queue of partition {partition}, found {rows}"
    return rows[0]


async def replace_queue(url: str, queue: dict, bindings: list[dict]) -> None:
    """Delete `queue` and declare it again with the same properties and bindings, as another client would."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue["name"])
        replaced = await channel.declare_queue(
            queue["name"], durable=queue["durable"], auto_delete=queue["auto_delete"], arguments=queue["arguments"]
        )
        for binding in bindings:
            await replaced.bind(binding["source_name"], routing_key=binding["routing_key"])


async def test_broker_cancel_worker_consumes_again(private_broker, daemons, broker, tmp_path, namespace):
    job = make_job("consumer-cancel", PLANS["count"], epochs=5, persist_every_steps=1)
    store = Store.open(daemons.store)
    for partition in job.build_plan().partitions:
        daemons.worker(partition)
    steps: asyncio.Queue[int] = asyncio.Queue()
    # Blocks in the replaced queue are lost, so their micro-batches time out and run again.
    runner = JobRunner(
        job=job, transport=broker, store=store, dataset=synthetic_dataset(), ready_timeout_s=60,
        micro_batch_timeout_s=3, step_timeout_s=30, heartbeat_timeout_s=3,
        on_progress=lambda event: steps.put_nowait(event.step),
    )

    await asyncio.to_thread(
        wait_until, lambda: "worker.started" in daemons.log("worker-b"), timeout_s=30,
        what="worker-b to start", details=lambda: daemons.log("worker-b"),
    )
    queue = await asyncio.to_thread(replica_queue, private_broker, namespace, "b")
    bindings = [
        row
        for row in await asyncio.to_thread(
            private_broker.list, "list_bindings", "source_name", "destination_name", "routing_key"
        )
        if row["destination_name"] == queue["name"] and row["source_name"] == broker.data_exchange
    ]
    assert bindings, f"no binding of {queue['name']} to {broker.data_exchange}"

    task = await run_until_step(runner, steps, 1)
    worker = daemons.processes["worker-b"]
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        await replace_queue(private_broker.url, queue, bindings)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert not task.done(), "the job ended before the queue was replaced"
    try:
        result = await asyncio.wait_for(asyncio.shield(task), 120)
    except TimeoutError:
        task.cancel()
        raise AssertionError(
            "timed out after 120 s waiting for the job to finish after the consumer cancel; worker-b log:\n"
            + daemons.log("worker-b")[-3000:]
        ) from None

    assert result.steps == 15
    assert worker.poll() is None, f"worker-b exited:\n{daemons.log('worker-b')[-2000:]}"
    assert "cancelled by the broker" in daemons.log("worker-b")
    await asyncio.to_thread(
        wait_until, lambda: queue["name"] in private_broker.consumer_queues(), timeout_s=10,
        what=f"a consumer on {queue['name']}",
    )
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert_bit_identical(distributed, await undisturbed_weights(job, tmp_path, namespace))
