"""A RabbitMQ restart in the middle of a job, on a private node that only this test uses.

Every client loses its connection when the node's application stops. The
workers and the scheduler must reconnect, consume their queues again and
finish the job with the same weights as an undisturbed run.
"""

from __future__ import annotations

import asyncio

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


def worker_queues_consumed(node) -> list[str]:
    """Return the partition and replica queues that have a consumer, once per consumer."""
    return [queue for queue in node.consumer_queues() if ".part." in queue or ".w." in queue]


async def test_broker_restart_mid_job_identical(private_broker, daemons, broker, tmp_path, namespace):
    # 30 steps, so that the job is still running when rabbitmqctl, an Erlang program that
    # takes a second or more to start, has stopped the broker.
    job = make_job("broker-restart", PLANS["count"], epochs=10, persist_every_steps=1)
    store = Store.open(daemons.store)
    for partition in job.build_plan().partitions:
        daemons.worker(partition)
    steps: asyncio.Queue[int] = asyncio.Queue()
    runner = JobRunner(
        job=job, transport=broker, store=store, dataset=synthetic_dataset(), ready_timeout_s=60,
        step_timeout_s=30, heartbeat_timeout_s=3, on_progress=lambda event: steps.put_nowait(event.step),
    )

    for name in ("worker-a", "worker-b", "worker-c"):
        await asyncio.to_thread(
            wait_until, lambda name=name: "worker.started" in daemons.log(name), timeout_s=30,
            what=f"{name} to start", details=lambda name=name: daemons.log(name),
        )
    worker_consumers = sorted(await asyncio.to_thread(worker_queues_consumed, private_broker))
    assert {f"{namespace}.part.{partition}" for partition in "abc"} <= set(worker_consumers)

    task = await run_until_step(runner, steps, 1)
    await asyncio.to_thread(private_broker.stop_app)
    try:
        assert not task.done(), "the job ended before the broker stopped"
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(private_broker.start_app)
    try:
        result = await asyncio.wait_for(asyncio.shield(task), 150)
    except TimeoutError:
        task.cancel()
        consumers = await asyncio.to_thread(private_broker.consumer_queues)
        raise AssertionError(
            f"timed out after 150 s waiting for the job to finish after the broker restart; consumers on {consumers}"
        ) from None

    assert result.steps == 30
    assert broker.reconnect_count >= 1
    for name in ("worker-a", "worker-b", "worker-c"):
        assert daemons.processes[name].poll() is None, f"{name} exited:\n{daemons.log(name)[-2000:]}"
    assert sorted(await asyncio.to_thread(worker_queues_consumed, private_broker)) == worker_consumers
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert_bit_identical(distributed, await undisturbed_weights(job, tmp_path, namespace))
