"""A worker's host cut off from the broker in the middle of a job.

Worker b runs in a network namespace of its own and reaches a private
RabbitMQ node through a veth pair. The test sets the link down for longer
than the scheduler's heartbeat timeout, so the scheduler loses the worker's
heartbeats and rolls the job back. Then it sets the link up again. The same
worker process must rejoin, and the job must end with the weights of an
undisturbed run.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mpnn_async.runtime import weights
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.store import ModelStore, Store
from tests.runtime.broker_node import PrivateBroker, find_rabbitmq_scripts
from tests.runtime.jobs import PLANS, make_job, synthetic_dataset
from tests.runtime.netns import NetworkNamespace, netns_unavailable_reason
from tests.runtime.processes import wait_until
from tests.runtime.test_rabbitmq_failures import (
    assert_bit_identical,
    run_until_step,
    undisturbed_weights,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

HEARTBEAT_TIMEOUT_S = 3.0


@pytest.fixture
def network_namespace():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"needs a network namespace to cut a worker off: {reason}")
    namespace = NetworkNamespace()
    namespace.create()
    yield namespace
    namespace.delete()


@pytest.fixture
def partition_broker(network_namespace, tmp_path_factory):
    """A private RabbitMQ node listening on loopback and on the host end of the veth pair."""
    if find_rabbitmq_scripts() is None:
        pytest.skip("needs rabbitmq-server and rabbitmqctl to start a private RabbitMQ node")
    node = PrivateBroker(
        tmp_path_factory.mktemp("rabbitmq-node"), listen_hosts=("127.0.0.1", network_namespace.host_address)
    )
    node.start()
    yield node
    node.stop()


@pytest.fixture
def broker_url(partition_broker):
    return partition_broker.url


# With aiormq's default AMQP heartbeat (60 s) the TCP connection outlives the
# cut and carries on. With a 2 s heartbeat both ends give the connection up
# within about 9 s, so the worker must reconnect and consume again.
@pytest.mark.parametrize(
    ("link_down_s", "url_query"),
    [(8.0, ""), (15.0, "?heartbeat=2")],
    ids=["connection-survives", "connection-dropped"],
)
async def test_cut_off_worker_rejoins_identical(
    link_down_s, url_query, network_namespace, partition_broker, daemons, broker, tmp_path, namespace
):
    job = make_job("cut-off", PLANS["count"], epochs=5, persist_every_steps=1)
    store = Store.open(daemons.store)
    daemons.worker("a")
    daemons.worker("c")
    worker_url = partition_broker.url_for(network_namespace.host_address) + url_query
    daemons.worker("b", "--broker", worker_url, prefix=network_namespace.command())
    steps: asyncio.Queue[int] = asyncio.Queue()
    runner = JobRunner(
        job=job, transport=broker, store=store, dataset=synthetic_dataset(), ready_timeout_s=90,
        micro_batch_timeout_s=5, step_timeout_s=30, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        on_progress=lambda event: steps.put_nowait(event.step),
    )

    task = await run_until_step(runner, steps, 1)
    cut_at = time.monotonic()
    await asyncio.to_thread(network_namespace.cut)
    try:
        await asyncio.to_thread(
            wait_until, lambda: "b" not in runner.channel.liveness.live_partitions(),
            timeout_s=HEARTBEAT_TIMEOUT_S + 10, what="the scheduler to lose partition b's heartbeats",
        )
        assert not task.done(), "the job ended while worker b was cut off"
        await asyncio.sleep(max(0.0, link_down_s - (time.monotonic() - cut_at)))
    finally:
        await asyncio.to_thread(network_namespace.restore)
    try:
        result = await asyncio.wait_for(asyncio.shield(task), 150)
    except TimeoutError:
        task.cancel()
        raise AssertionError(
            "timed out after 150 s waiting for the job to finish after the link came back; worker-b log:\n"
            + daemons.log("worker-b")[-3000:]
        ) from None

    assert result.steps == 15
    assert result.recoveries >= 1
    assert daemons.processes["worker-b"].poll() is None, f"worker-b exited:\n{daemons.log('worker-b')[-2000:]}"
    reconnected = "transport.reconnected" in daemons.log("worker-b")
    assert reconnected == bool(url_query), f"worker-b reconnected: {reconnected}"
    distributed = weights.load_parameters(ModelStore(store, job.name), job.build_plan())
    assert_bit_identical(distributed, await undisturbed_weights(job, tmp_path, namespace))
