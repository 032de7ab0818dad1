"""Serving over RabbitMQ: `mpnn serve` and `mpnn worker` processes, `mpnn infer` and the client."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mpnn_async.client import InferenceClient
from mpnn_async.model.reference import ReferenceTrainer
from mpnn_async.runtime import snapshots, weights
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.store import ModelStore, Store
from tests.runtime.jobs import PLANS, make_job, synthetic_dataset
from tests.runtime.processes import wait_until

pytestmark = pytest.mark.rabbitmq


async def test_serve_and_infer_processes(daemons, broker, tmp_path):
    job = make_job("rmq-serve", PLANS["count"], max_steps=3)
    store = Store.open(daemons.store)
    for partition in job.build_plan().partitions:
        daemons.worker(partition)
    await JobRunner(job=job, transport=broker, store=store, dataset=synthetic_dataset(), ready_timeout_s=60).run()
    model_store = ModelStore(store, "rmq-serve")
    snapshots.create_snapshot(model_store, "v1")
    daemons.serve("rmq-serve", "v1")
    await asyncio.to_thread(
        wait_until, lambda: "serve.started" in daemons.log("serve-rmq-serve"), timeout_s=60,
        what="the server to load the snapshot", details=lambda: daemons.log("serve-rmq-serve"),
    )
    inputs = np.random.default_rng(4).standard_normal((7, 6))
    np.save(tmp_path / "inputs.npy", inputs)
    parameters = weights.load_parameters(model_store, job.build_plan())
    expected = ReferenceTrainer(job.model, job.optimizer, parameters=parameters).predict(inputs)

    completed = await asyncio.to_thread(
        daemons.run, "infer", "rmq-serve", str(tmp_path / "inputs.npy"), "--output", str(tmp_path / "out.npy")
    )
    client = InferenceClient(broker, model="rmq-serve", timeout_s=30)
    await client.start()
    try:
        batch = await asyncio.gather(*(client.infer(inputs[i : i + 1]) for i in range(7)))
    finally:
        await client.close()

    assert completed.returncode == 0, completed.stderr
    assert np.max(np.abs(np.load(tmp_path / "out.npy") - expected)) <= 1e-12
    assert np.max(np.abs(np.concatenate(batch) - expected)) <= 1e-12
    assert client.last_snapshot == "v1"


async def test_infer_without_server_fails_clearly(daemons, tmp_path):
    np.save(tmp_path / "inputs.npy", np.zeros((1, 6)))

    completed = await asyncio.to_thread(daemons.run, "infer", "nobody-serves-this", str(tmp_path / "inputs.npy"))

    assert completed.returncode != 0
    assert "no inference server" in completed.stderr
