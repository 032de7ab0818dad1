"""Distributed training on the in-process transport equals the single-process reference."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.runtime import weights
from mpnn_async.runtime.reference_run import train_reference
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.runtime.worker import Worker
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport import open_transport
from tests.runtime.jobs import PLANS, make_job, max_abs_difference, synthetic_dataset


async def run_in_process(job, dataset, store, namespace, *, optimizer_state_dir=""):
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    plan = job.build_plan()
    worker = Worker(
        transport=transport,
        store=store,
        partitions=plan.partitions,
        worker_id="test",
        optimizer_state_dir=optimizer_state_dir,
    )
    await worker.start()
    try:
        result = await JobRunner(job=job, transport=transport, store=store, dataset=dataset).run()
    finally:
        await worker.stop(timeout_s=5)
        await transport.close()
    return result, worker


@pytest.mark.parametrize("strategy", sorted(PLANS))
async def test_weights_match_reference(strategy, tmp_path, namespace):
    job = make_job(f"exact-{strategy}", PLANS[strategy])
    dataset = synthetic_dataset()
    store = Store.open(tmp_path, create=True)

    result, worker = await run_in_process(job, dataset, store, namespace)

    reference = train_reference(job, dataset)
    plan = job.build_plan()
    distributed = weights.load_parameters(ModelStore(store, job.training.store_model), plan)
    assert result.steps == reference.steps_done == 6
    assert max_abs_difference(distributed, reference.parameters) <= 1e-10
    assert worker.counters["dead_lettered"] == 0


@pytest.mark.parametrize("optimizer", [{"kind": "sgd", "learning_rate": 0.1},
                                       {"kind": "momentum", "learning_rate": 0.05, "weight_decay": 0.01}])
async def test_other_optimizers_match_reference(optimizer, tmp_path, namespace):
    job = make_job("exact-opt", PLANS["mixed"], optimizer=optimizer, in_flight=3)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path, create=True)

    await run_in_process(job, dataset, store, namespace)

    reference = train_reference(job, dataset)
    distributed = weights.load_parameters(ModelStore(store, job.training.store_model), job.build_plan())
    assert max_abs_difference(distributed, reference.parameters) <= 1e-10


async def test_second_job_continues_from_stored_weights(tmp_path, namespace):
    dataset = synthetic_dataset()
    store = Store.open(tmp_path, create=True)
    first = make_job("continue", PLANS["count"], max_steps=2)
    await run_in_process(first, dataset, store, namespace)
    # Same model name, another plan: the store re-cuts the weights and optimizer state.
    second = make_job("continue", PLANS["whole"], max_steps=2)

    await run_in_process(second, dataset, store, namespace)

    reference = train_reference(second, dataset, trainer=train_reference(first, dataset))
    distributed = weights.load_parameters(ModelStore(store, "continue"), second.build_plan())
    assert max_abs_difference(distributed, reference.parameters) <= 1e-10


@pytest.mark.parametrize("optimizer", [{"kind": "adam", "learning_rate": 0.01, "weight_decay": 0.01},
                                       {"kind": "momentum", "learning_rate": 0.05}])
async def test_state_in_files_matches_reference(optimizer, tmp_path, namespace):
    # Two jobs on one model, persisting every 2 steps: the second loads the stored state into files.
    dataset = synthetic_dataset()
    store = Store.open(tmp_path / "store", create=True)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    first = make_job("files", PLANS["mixed"], optimizer=optimizer, max_steps=3, persist_every_steps=2)
    second = make_job("files", PLANS["mixed"], optimizer=optimizer, max_steps=3)

    await run_in_process(first, dataset, store, namespace, optimizer_state_dir=str(state_dir))
    await run_in_process(second, dataset, store, namespace, optimizer_state_dir=str(state_dir))

    reference = train_reference(second, dataset, trainer=train_reference(first, dataset))
    model_store = ModelStore(store, "files")
    plan = second.build_plan()
    assert max_abs_difference(weights.load_parameters(model_store, plan), reference.parameters) <= 1e-10
    state_names = {"adam": ("exp_avg", "exp_avg_sq"), "momentum": ("momentum_buffer",)}[optimizer["kind"]]
    for partition in plan.partitions:
        version = store.read(model_store.partition_key(partition))
        assert version.meta["step"] == 6
        for layer in plan.layers_of(partition):
            rows = plan.neurons(partition, layer)
            w_state, b_state = reference.optimizer_state[layer - 1]
            for name in state_names:
                stored = version.arrays[f"W{layer}.{name}"]
                assert np.max(np.abs(stored - w_state[name][rows])) <= 1e-10, (partition, layer, name)
                assert np.max(np.abs(version.arrays[f"b{layer}.{name}"] - b_state[name][rows])) <= 1e-10
    assert list(state_dir.iterdir()) == []


async def test_sparse_persistence_keeps_last_step(tmp_path, namespace):
    job = make_job("sparse", PLANS["percent"], persist_every_steps=4)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path, create=True)

    await run_in_process(job, dataset, store, namespace)

    model_store = ModelStore(store, "sparse")
    plan = job.build_plan()
    for partition in plan.partitions:
        key = model_store.partition_key(partition)
        # Version 1 is the initial slice; steps 4 and 6 were persisted.
        assert store.latest_version(key) == 3
        assert store.read(key).meta["step"] == 6
        assert len(store.list_versions(key)) <= weights.KEEP_VERSIONS
    reference = train_reference(job, dataset)
    assert max_abs_difference(weights.load_parameters(model_store, plan), reference.parameters) <= 1e-10


async def test_progress_events_published(tmp_path, namespace):
    from mpnn_async.wire import decode_control

    job = make_job("events", PLANS["whole"], max_steps=3)
    store = Store.open(tmp_path, create=True)
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    queue = await transport.declare_queue("watch", ["events.progress"], durable=False)
    events = []

    async def collect(delivery):
        events.append(decode_control(delivery.body, max_size_bytes=1 << 20).payload)
        await delivery.ack()

    await transport.consume(queue, collect, prefetch=100)
    worker = Worker(transport=transport, store=store, partitions=("a", "b", "c"))
    await worker.start()
    try:
        await JobRunner(job=job, transport=transport, store=store, dataset=synthetic_dataset()).run()
    finally:
        await worker.stop(timeout_s=5)
        await transport.close()

    assert [event["step"] for event in events if event["accuracy"] is None] == [1, 2, 3]
    assert events[-1]["state"] == "finished"
    assert events[-1]["accuracy"] is not None


async def test_in_flight_beyond_prefetch_fails_job(tmp_path, namespace):
    from mpnn_async.runtime.scheduler import JobFailedError

    job = make_job("prefetch", PLANS["count"], in_flight=10)
    store = Store.open(tmp_path, create=True)
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    worker = Worker(transport=transport, store=store, partitions=("a", "b", "c"), prefetch=16)
    await worker.start()
    try:
        runner = JobRunner(job=job, transport=transport, store=store, dataset=synthetic_dataset())
        with pytest.raises(JobFailedError, match="lower job.in_flight"):
            await runner.run()
    finally:
        await worker.stop(timeout_s=5)
        await transport.close()


class DuplicatingTransport:
    """Delivers every published message twice: at-least-once delivery at its worst."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def publish(self, message):
        await self._inner.publish(message)
        await self._inner.publish(message)

    async def publish_many(self, messages):
        messages = list(messages)
        await self._inner.publish_many(messages + messages)


async def test_duplicate_deliveries_change_nothing(tmp_path, namespace):
    job = make_job("twice", PLANS["mixed"], in_flight=3)
    dataset = synthetic_dataset()
    store = Store.open(tmp_path, create=True)
    inner = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    transport = DuplicatingTransport(inner)
    worker = Worker(transport=transport, store=store, partitions=job.build_plan().partitions)
    await worker.start()
    try:
        result = await JobRunner(job=job, transport=transport, store=store, dataset=dataset).run()
    finally:
        await worker.stop(timeout_s=5)
        await inner.close()

    reference = train_reference(job, dataset)
    distributed = weights.load_parameters(ModelStore(store, "twice"), job.build_plan())
    assert result.steps == 6
    assert max_abs_difference(distributed, reference.parameters) <= 1e-10
    assert worker.counters["duplicates"] > 0
    assert worker.counters["dead_lettered"] == 0
