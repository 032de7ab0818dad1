"""A job whose blocks are larger than the broker's message size limit, so that they travel in chunks, equals the reference."""

from __future__ import annotations

import numpy as np

from mpnn_async.data import Dataset
from mpnn_async.runtime import weights
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.reference_run import train_reference
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.runtime.worker import Worker
from mpnn_async.store import ModelStore, Store
from tests.runtime.jobs import max_abs_difference

# The transports' max_message_bytes in this test.
LIMIT = 64 * 1024
INPUTS = 64
CLASSES = 10
MICRO_BATCH_ROWS = 160

MODEL = {
    "input": INPUTS,
    "layers": [
        {"width": 96, "activation": "tanh"},
        {"width": 64, "activation": "gelu"},
        {"width": CLASSES, "activation": "identity"},
    ],
    "loss": "softmax_cross_entropy",
    "dtype": "float64",
    "seed": 11,
}
# Layer 1 split unevenly, so that its owners send blocks over, near and under the limit.
PLAN = {
    "partitions": ["a", "b", "c"],
    "layers": [
        {"layers": [1], "strategy": "count", "counts": {"a": 56, "b": 24, "c": 16}},
        {"layers": [2], "strategy": "percent", "shares": {"a": 25, "b": 25, "c": 50}},
        {"layers": [3], "strategy": "whole", "partition": "b"},
    ],
}


def large_block_job() -> JobSpec:
    return JobSpec.from_dict(
        {
            "job": {
                "name": "chunked",
                "epochs": 2,
                "batch_rows": 2 * MICRO_BATCH_ROWS,
                "micro_batch_rows": MICRO_BATCH_ROWS,
                "in_flight": 2,
                "seed": 5,
                "persist_every_steps": 1,
            },
            "model": MODEL,
            "plan": PLAN,
            "optimizer": {"kind": "adam", "learning_rate": 0.01},
            "dataset": {"name": "digits"},
        }
    )


def large_block_dataset(*, train_rows: int = 640, test_rows: int = 32) -> Dataset:
    rng = np.random.default_rng(1)
    rule = rng.standard_normal((INPUTS, CLASSES))
    x = rng.standard_normal((train_rows + test_rows, INPUTS))
    y = np.argmax(x @ rule, axis=1).astype(np.int64)
    return Dataset(
        name="synthetic-wide",
        x_train=x[:train_rows],
        y_train=y[:train_rows],
        x_test=x[train_rows:],
        y_test=y[train_rows:],
        classes=CLASSES,
        features=INPUTS,
    )


async def test_chunked_blocks_match_reference(transport_kind, transport_factory, tmp_path):
    # The input block and partition a's layer-1 block each take two chunks.
    assert MICRO_BATCH_ROWS * INPUTS * 8 > LIMIT
    assert MICRO_BATCH_ROWS * 56 * 8 > LIMIT
    job = large_block_job()
    dataset = large_block_dataset()
    store = Store.open(tmp_path, create=True)
    transport = await transport_factory(transport_kind, max_message_bytes=LIMIT)
    worker = Worker(
        transport=transport,
        store=store,
        partitions=job.build_plan().partitions,
        worker_id="chunked",
        max_message_bytes=transport.max_body_bytes,
    )
    await worker.start()
    try:
        runner = JobRunner(
            job=job, transport=transport, store=store, dataset=dataset, max_message_bytes=transport.max_body_bytes
        )
        result = await runner.run()
    finally:
        await worker.stop(timeout_s=5)

    reference = train_reference(job, dataset)
    distributed = weights.load_parameters(ModelStore(store, job.training.store_model), job.build_plan())
    assert result.steps == reference.steps_done == 4
    assert max_abs_difference(distributed, reference.parameters) <= 1e-10
    assert worker.counters["dead_lettered"] == 0
    assert await transport.queue_depth(transport.dead_letter_queue) == 0
