"""The partition state machine: admission, duplicates, attempts and the fixed summation order."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.planning import build_plan, slice_parameters
from mpnn_async.runtime.partition import Admission, PartitionJob, RejectedBlock
from mpnn_async.runtime.protocol import Rejection
from mpnn_async.wire import BlockHeader, MessageKind
from tests.runtime.jobs import PLANS, make_job

ROWS = 3


def partition_job(partition: str = "b", plan_table: dict | None = None) -> PartitionJob:
    job = make_job("unit", plan_table or PLANS["count"])
    plan = build_plan(job.model, job.plan)
    full = job.model.init_parameters()
    sliced = slice_parameters(plan, partition, full)
    return PartitionJob(
        job="unit",
        plan=plan,
        partition=partition,
        spec=job.model,
        optimizer=job.optimizer,
        parameters={layer: (w.copy(), b.copy()) for layer, (w, b) in sliced.items()},
        optimizer_state={},
        step=0,
        version=1,
    )


def header(kind, layer, source, *, destination="b", micro_batch=0, attempt=0, step=0):
    return BlockHeader(
        kind=kind,
        job="unit",
        step=step,
        micro_batch=micro_batch,
        layer=layer,
        source=source,
        destination=destination,
        attempt=attempt,
    )


def deliver(job: PartitionJob, head: BlockHeader, array: np.ndarray) -> list:
    """Admit and add one block, run every computation it makes ready; return the sends."""
    assert job.admit(head, array) is Admission.ACCEPT
    ready = job.add(head, array, delivery=None)
    sends = []
    pending = [ready] if ready else []
    while pending:
        result = job.compute(pending.pop(0))
        sends.extend(result.sends)
        pending.extend(result.ready)
    return sends


# Partition a owns layers 1 and 2; the output layer is split over b, c and d,
# so a's layer-2 backward pass sums three remote partials.
FAN_IN_PLAN = {
    "partitions": ["a", "b", "c", "d"],
    "layers": [
        {"layers": [1, 2], "strategy": "whole", "partition": "a"},
        {"layers": [3], "strategy": "ids", "ids": {"b": [0, 1], "c": [2], "d": [3]}},
    ],
}


def test_partial_gradients_summed_in_partition_order():
    # In float64, (1e16 + -1e16) + 1 is 1, but (1 + -1e16) + 1e16 is 0: the order shows.
    partials = {"b": 1e16, "c": -1e16, "d": 1.0}
    weights = []
    for order in (("b", "c", "d"), ("d", "c", "b"), ("c", "d", "b")):
        job = partition_job("a", FAN_IN_PLAN)
        deliver(job, header(MessageKind.ACTIVATION, 0, "scheduler", destination="a"),
                np.random.default_rng(0).standard_normal((ROWS, 6)))
        for source in order:
            block = np.full((ROWS, 5), partials[source])
            deliver(job, header(MessageKind.GRADIENT, 2, source, destination="a"), block)
        job.apply_step(0, 1)
        weights.append(job.parameters[2][0])

    assert np.array_equal(weights[0], weights[1])
    assert np.array_equal(weights[0], weights[2])
    assert not np.array_equal(weights[0], partition_job("a", FAN_IN_PLAN).parameters[2][0])


def test_duplicate_block_dropped():
    job = partition_job()
    block = np.zeros((ROWS, 6))
    deliver(job, header(MessageKind.ACTIVATION, 0, "scheduler"), block)

    assert job.admit(header(MessageKind.ACTIVATION, 0, "scheduler"), block) is Admission.DUPLICATE


def test_older_attempt_superseded_newer_restarts_gather():
    job = partition_job()
    columns = len(job.plan.neurons("a", 1))
    deliver(job, header(MessageKind.ACTIVATION, 0, "scheduler", attempt=1), np.zeros((ROWS, 6)))

    stale = header(MessageKind.ACTIVATION, 1, "a", attempt=0)
    assert job.admit(stale, np.zeros((ROWS, columns))) is Admission.SUPERSEDED

    newer = header(MessageKind.ACTIVATION, 0, "scheduler", attempt=2)
    assert job.admit(newer, np.zeros((ROWS, 6))) is Admission.ACCEPT


def test_block_of_applied_step_superseded():
    job = partition_job()
    job.step = 2

    late = header(MessageKind.ACTIVATION, 0, "scheduler", step=1)
    assert job.admit(late, np.zeros((ROWS, 6))) is Admission.SUPERSEDED


@pytest.mark.parametrize(
    ("head", "shape", "reason"),
    [
        (header(MessageKind.ACTIVATION, 0, "scheduler", destination="a"), (ROWS, 6), Rejection.UNEXPECTED_BLOCK),
        (header(MessageKind.ACTIVATION, 0, "scheduler"), (ROWS, 5), Rejection.UNEXPECTED_BLOCK),
        (header(MessageKind.ACTIVATION, 1, "scheduler"), (ROWS, 3), Rejection.UNEXPECTED_BLOCK),
        (header(MessageKind.ACTIVATION, 3, "c"), (ROWS, 1), Rejection.UNEXPECTED_BLOCK),
        (header(MessageKind.GRADIENT, 2, "a"), (ROWS, 2), Rejection.UNEXPECTED_BLOCK),
    ],
    ids=["wrong-destination", "wrong-width", "wrong-source", "beyond-last-layer", "gradient-before-forward"],
)
def test_block_not_fitting_plan_rejected(head, shape, reason):
    job = partition_job()

    with pytest.raises(RejectedBlock) as caught:
        job.admit(head, np.zeros(shape))

    assert caught.value.reason is reason


def test_non_finite_block_rejected():
    job = partition_job()
    block = np.zeros((ROWS, 6))
    block[1, 2] = np.nan

    with pytest.raises(RejectedBlock) as caught:
        job.admit(header(MessageKind.ACTIVATION, 0, "scheduler"), block)

    assert caught.value.reason is Rejection.NON_FINITE


def test_wrong_dtype_rejected():
    job = partition_job()

    with pytest.raises(RejectedBlock) as caught:
        job.admit(header(MessageKind.ACTIVATION, 0, "scheduler"), np.zeros((ROWS, 6), dtype=np.float32))

    assert caught.value.reason is Rejection.UNEXPECTED_BLOCK


def test_step_apply_needs_every_micro_batch():
    job = partition_job()

    with pytest.raises(ValueError, match="expected gradients of 1 micro-batches"):
        job.apply_step(0, 1)
