"""A job on an imported model trains from the imported weights, with fresh optimizer state."""

from __future__ import annotations

import pytest

from mpnn_async.interchange import import_parameters
from mpnn_async.runtime.reference_run import train_reference
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.runtime.weights import load_parameters
from mpnn_async.runtime.worker import Worker
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport import open_transport
from tests.interchange.helpers import make_plan, random_parameters
from tests.runtime.jobs import PLANS, make_job, max_abs_difference, synthetic_dataset

STEPS = 3


async def train_in_process(job, dataset, store, namespace):
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    worker = Worker(transport=transport, store=store, partitions=job.build_plan().partitions, worker_id="test")
    await worker.start()
    try:
        return await JobRunner(job=job, transport=transport, store=store, dataset=dataset).run()
    finally:
        await worker.stop(timeout_s=5)
        await transport.close()


@pytest.mark.parametrize(("import_plan", "job_plan"), [("mixed", "mixed"), ("count", "whole")])
async def test_job_continues_from_imported_weights(import_plan, job_plan, tmp_path, namespace):
    store = Store.open(tmp_path, create=True)
    imported = random_parameters(make_plan().spec, extreme_values=False)
    import_parameters(ModelStore(store, "imported"), make_plan(plan=import_plan), imported)
    job = make_job("imported", PLANS[job_plan], max_steps=STEPS)
    dataset = synthetic_dataset()

    result = await train_in_process(job, dataset, store, namespace)

    reference = train_reference(job, dataset, initial=[(w.copy(), b.copy()) for w, b in imported])
    trained = load_parameters(ModelStore(store, "imported"), job.build_plan())
    assert result.steps == STEPS
    assert max_abs_difference(trained, imported) > 1e-3
    assert max_abs_difference(trained, reference.parameters) <= 1e-10


async def test_overwrite_resets_optimizer_state(tmp_path, namespace):
    store = Store.open(tmp_path, create=True)
    model_store = ModelStore(store, "retrained")
    job = make_job("retrained", PLANS["percent"], max_steps=STEPS)
    dataset = synthetic_dataset()
    await train_in_process(job, dataset, store, namespace)
    imported = random_parameters(make_plan().spec, seed=5, extreme_values=False)
    import_parameters(model_store, job.build_plan(), imported, overwrite=True)

    await train_in_process(job, dataset, store, namespace)

    # Adam from scratch: no moments or step count carried over from the first job.
    reference = train_reference(job, dataset, initial=[(w.copy(), b.copy()) for w, b in imported])
    trained = load_parameters(model_store, job.build_plan())
    assert max_abs_difference(trained, reference.parameters) <= 1e-10
    assert store.read(model_store.partition_key("a")).meta["step"] == STEPS
