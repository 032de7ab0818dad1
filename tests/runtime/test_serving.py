"""Inference serving over the in-process transport: exact outputs, batching, errors, switching."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mpnn_async.client import InferenceClient, InferenceError
from mpnn_async.model.reference import ReferenceTrainer
from mpnn_async.runtime import snapshots, weights
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.runtime.serving import InferenceServer
from mpnn_async.runtime.worker import Worker
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Outgoing
from tests.runtime.jobs import PLANS, make_job, synthetic_dataset


@pytest.fixture
async def served(tmp_path, namespace):
    """A model trained for 2 steps and snapshotted as "v1", with a worker and a server running."""
    store = Store.open(tmp_path, create=True)
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    job = make_job("served", PLANS["mixed"], max_steps=2)
    worker = Worker(transport=transport, store=store, partitions=job.build_plan().partitions)
    await worker.start()
    await JobRunner(job=job, transport=transport, store=store, dataset=synthetic_dataset()).run()
    model_store = ModelStore(store, "served")
    snapshots.create_snapshot(model_store, "v1")
    server = InferenceServer(transport=transport, store=store, model="served", request_timeout_s=5)
    await server.start("v1")
    client = InferenceClient(transport, model="served", timeout_s=10)
    await client.start()
    yield job, transport, store, server, client, worker
    await client.close()
    await server.stop()
    await worker.stop(timeout_s=5)
    await transport.close()


def reference_outputs(job, store, inputs):
    plan = job.build_plan()
    parameters = weights.load_parameters(ModelStore(store, job.training.store_model), plan)
    return ReferenceTrainer(job.model, job.optimizer, parameters=parameters).predict(inputs)


async def test_outputs_equal_reference_forward(served):
    job, _, store, _, client, _ = served
    inputs = np.random.default_rng(1).standard_normal((5, 6))

    outputs = await client.infer(inputs)

    assert outputs.shape == (5, 4)
    assert np.max(np.abs(outputs - reference_outputs(job, store, inputs))) <= 1e-12
    assert client.last_snapshot == "v1"


async def test_concurrent_requests_batched(served):
    job, _, store, server, client, _ = served
    rng = np.random.default_rng(2)
    requests = [rng.standard_normal((rows, 6)) for rows in (1, 3, 1, 64)]

    results = await asyncio.gather(*(client.infer(inputs) for inputs in requests))

    for inputs, outputs in zip(requests, results):
        assert np.max(np.abs(outputs - reference_outputs(job, store, inputs))) <= 1e-12
    assert server.counters["batches"] < len(requests)


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        (np.zeros((2, 5)), "invalid_request"),
        (np.zeros((2, 6), dtype=np.float32), "invalid_request"),
        (np.full((2, 6), np.nan), "non_finite"),
    ],
    ids=["wrong-width", "wrong-dtype", "nan"],
)
async def test_invalid_request_gets_error_reply(served, inputs, reason):
    _, _, _, _, client, _ = served

    with pytest.raises(InferenceError) as caught:
        await client.infer(inputs)

    assert caught.value.reason == reason


async def test_garbage_request_gets_error_reply(served):
    _, transport, _, _, client, _ = served
    replies = asyncio.Queue()
    queue = await transport.declare_queue("reply.garbage", ["reply.garbage"], durable=False)
    await transport.consume(queue, lambda delivery: replies.put(delivery), prefetch=1)

    await transport.publish(Outgoing("infer.served", b"not a block", reply_to="reply.garbage", correlation_id="x1"))
    reply = await asyncio.wait_for(replies.get(), 5)

    assert b"inference.error" in reply.body
    assert b"bad_magic" in reply.body
    assert reply.correlation_id == "x1"
    await reply.ack()


async def test_request_times_out_with_error_reply(served):
    _, _, _, server, client, worker = served
    server.request_timeout_s = 0.5
    await worker.stop(timeout_s=5)

    with pytest.raises(InferenceError) as caught:
        await client.infer(np.zeros((1, 6)))

    assert caught.value.reason == "timed_out"


async def test_switch_serves_new_snapshot(served):
    job, transport, store, server, client, _ = served
    inputs = np.random.default_rng(3).standard_normal((4, 6))
    before = await client.infer(inputs)
    more = make_job("served", PLANS["mixed"], max_steps=2)
    await JobRunner(job=more, transport=transport, store=store, dataset=synthetic_dataset(seed=9)).run()
    snapshots.create_snapshot(ModelStore(store, "served"), "v2")

    await server.switch("v2")
    after = await client.infer(inputs)

    assert client.last_snapshot == "v2"
    assert not np.array_equal(before, after)
    assert np.max(np.abs(after - reference_outputs(job, store, inputs))) <= 1e-12


async def test_snapshot_name_cannot_be_reused(served):
    _, _, store, _, _, _ = served

    with pytest.raises(Exception, match="exists"):
        snapshots.create_snapshot(ModelStore(store, "served"), "v1")


async def test_switch_command_on_request_queue(served):
    from mpnn_async.wire import encode_control

    _, transport, store, server, client, _ = served
    snapshots.create_snapshot(ModelStore(store, "served"), "again")

    await transport.publish(Outgoing("infer.served", encode_control("serve.switch", {"snapshot": "again"})))
    await client.infer(np.zeros((1, 6)))

    assert server.active.snapshot == "again"
