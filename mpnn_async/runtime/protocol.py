"""Control messages and routing keys of the runtime.

Data blocks (activations, gradients) use the binary codec in
`mpnn_async.wire`; everything else is a small JSON control message whose
`type` is one of `ControlType`. Every message of a job is routed on the data
exchange by a key that starts with the job name:

- `<job>.part.<partition>`: messages for whichever worker of a partition takes
  them (serving); a worker's shared queue for partition p binds `*.part.p`, so
  one queue serves every job.
- `<job>.w.<worker>.<partition>`: messages for one replica of a partition
  (training blocks, job and step control). Each worker has one such queue per
  partition it hosts, so all blocks of one micro-batch reach the replica that
  its route names.
- `assign.<worker>`: partition assignments for a worker of the pool.
- `<job>.sched`: replies to the scheduler running that job.
- `<job>.progress`: progress events, published without `mandatory`, so they
  reach any queue bound to them and are dropped when there is none.
- `jobs`: job documents waiting for a scheduler (a durable queue).
"""

from __future__ import annotations

import enum
from typing import Any, Mapping

from mpnn_async.wire import CodecError, RejectReason, decode_control, encode_control

__all__ = [
    "ATTEMPT_STRIDE",
    "HEARTBEATS_ROUTING_KEY",
    "ControlType",
    "Rejection",
    "JOBS_ROUTING_KEY",
    "assignment_routing_key",
    "attempt_floor",
    "control",
    "parse_control",
    "replica_binding",
    "replica_routing_key",
    "partition_binding",
    "inference_routing_key",
    "partition_routing_key",
    "progress_routing_key",
    "scheduler_routing_key",
]

JOBS_ROUTING_KEY = "jobs"
JOBS_QUEUE = "jobs"


class ControlType(enum.StrEnum):
    # scheduler -> partition: load the plan and weights of a job, then reply JOB_READY.
    JOB_START = "job.start"
    # partition -> scheduler: weights loaded, ready for data.
    JOB_READY = "job.ready"
    # partition -> scheduler: every layer-1 neuron of this partition finished the
    # backward pass of a micro-batch (implies every later layer did too).
    MICRO_BATCH_DONE = "micro_batch.done"
    # scheduler -> partition: apply the optimizer to the accumulated gradients.
    STEP_APPLY = "step.apply"
    # partition -> scheduler: new weights persisted as store version `version`.
    STEP_DONE = "step.done"
    # scheduler -> partition: the job is over; free its state.
    JOB_END = "job.end"
    # partition -> scheduler: the partition cannot go on with this job.
    JOB_FAILED = "job.failed"
    # worker -> anyone listening on `heartbeats`: this worker is alive and hosts these partitions.
    HEARTBEAT = "worker.heartbeat"
    # scheduler -> pool worker: host exactly these partitions from now on.
    WORKER_ASSIGN = "worker.assign"
    # operator -> scheduler: move the job to another plan at the next step boundary.
    JOB_REPLAN = "job.replan"


class Rejection(enum.StrEnum):
    """Runtime reasons to dead-letter a message that the codec accepted."""

    # The message names a job that this worker has not started.
    UNKNOWN_JOB = "unknown_job"
    # The job names a plan that the store does not contain.
    UNKNOWN_PLAN = "unknown_plan"
    # The block's layer, source, destination or shape does not fit the plan.
    UNEXPECTED_BLOCK = "unexpected_block"
    # The block holds NaN or infinity.
    NON_FINITE = "non_finite"
    # A control message of an unknown type or with invalid fields.
    INVALID_CONTROL = "invalid_control"


# Required payload fields of each control type and their Python types.
#
# `generation` counts the (re)starts of a job. The scheduler raises it when it
# rolls every partition back to the last checkpoint after a failure. Every block
# of the job carries it as its `attempt`, so leftovers of an earlier generation
# are recognised and dropped.
_FIELDS: dict[ControlType, dict[str, type | tuple[type, ...]]] = {
    ControlType.JOB_START: {
        "job": str,
        "plan_id": str,
        "model": str,
        "optimizer": dict,
        "step": int,
        # Micro-batches the scheduler keeps in flight; bounds the blocks a worker holds.
        "in_flight": int,
    },
    ControlType.JOB_READY: {
        "job": str,
        "partition": str,
        "worker": str,
        "version": int,
        "generation": int,
    },
    ControlType.MICRO_BATCH_DONE: {
        "job": str,
        "partition": str,
        "step": int,
        "micro_batch": int,
        "attempt": int,
    },
    # `persist`: commit the new weights to the store now (always true for a job's last step).
    ControlType.STEP_APPLY: {
        "job": str,
        "step": int,
        "micro_batches": int,
        "persist": bool,
        "generation": int,
    },
    ControlType.STEP_DONE: {
        "job": str,
        "partition": str,
        "step": int,
        "version": int,
        "generation": int,
    },
    ControlType.JOB_END: {"job": str},
    ControlType.JOB_FAILED: {"job": str, "partition": str, "error": str},
    ControlType.HEARTBEAT: {"worker": str, "partitions": list, "interval_s": (int, float)},
    ControlType.WORKER_ASSIGN: {"worker": str, "partitions": list},
    # `plan`: a `[plan]` table (partitions and layer rules) for the job's model.
    ControlType.JOB_REPLAN: {"job": str, "plan": dict},
}

# Optional payload fields and their types.
_OPTIONAL_FIELDS: dict[ControlType, dict[str, type]] = {
    ControlType.JOB_START: {
        # Load this snapshot instead of the latest version (serving).
        "snapshot": str,
        "generation": int,
        # Partition name -> store version to load (a checkpoint); absent means the latest.
        "versions": dict,
        # Workers that serve this partition in the job, in order; the first one persists it.
        "replicas": list,
    },
    ControlType.STEP_APPLY: {
        # Per micro-batch, the worker whose gradient of it counts (replicated partitions).
        "holders": list,
        "replicas": list,
    },
    ControlType.JOB_READY: {"step": int},
    ControlType.MICRO_BATCH_DONE: {"worker": str},
    ControlType.STEP_DONE: {"worker": str},
    # `during`: "start" when the worker could not load the job (the job may go on without it).
    ControlType.JOB_FAILED: {"worker": str, "during": str},
    # `assignable`: the worker was started without fixed partitions, so the pool may move it.
    # `instance`: random per process, so two processes that share a worker id can be distinguished.
    ControlType.HEARTBEAT: {"assignable": bool, "instance": str},
}

HEARTBEATS_ROUTING_KEY = "heartbeats"

# Attempts of the micro-batches of generation g are g * ATTEMPT_STRIDE + retries,
# so every retry of a generation is older than the first attempt of the next one.
ATTEMPT_STRIDE = 1 << 16


def attempt_floor(generation: int) -> int:
    """Return the first attempt number of a generation."""
    return generation * ATTEMPT_STRIDE


def partition_routing_key(job: str, partition: str) -> str:
    return f"{job}.part.{partition}"


def partition_binding(partition: str) -> str:
    return f"*.part.{partition}"


def replica_routing_key(job: str, worker: str, partition: str) -> str:
    """Routing key of messages for one worker's replica of a partition."""
    return f"{job}.w.{worker}.{partition}"


def replica_binding(worker: str, partition: str) -> str:
    return f"*.w.{worker}.{partition}"


def assignment_routing_key(worker: str) -> str:
    return f"assign.{worker}"


def scheduler_routing_key(job: str) -> str:
    return f"{job}.sched"


def inference_routing_key(model: str) -> str:
    """Routing key of inference requests for a model (the server's durable queue binds it)."""
    return f"infer.{model}"


def progress_routing_key(job: str) -> str:
    """Routing key of a job's progress events (JSON objects with type `job.progress`)."""
    return f"{job}.progress"


def control(kind: ControlType, **payload: Any) -> bytes:
    """Encode a control message, checking its fields against the protocol table."""
    _check_fields(kind, payload)
    return encode_control(str(kind), payload)


def parse_control(body: bytes, *, max_size_bytes: int) -> tuple[ControlType, dict[str, Any]]:
    """Decode and validate a control message; raise CodecError with the reason."""
    message = decode_control(body, max_size_bytes=max_size_bytes)
    try:
        kind = ControlType(message.kind)
    except ValueError:
        raise CodecError(
            RejectReason.INVALID_FIELD, f"unknown control type {message.kind!r}"
        ) from None
    payload = dict(message.payload)
    _check_fields(kind, payload)
    return kind, payload


def _check_fields(kind: ControlType, payload: Mapping[str, Any]) -> None:
    for name, expected in _FIELDS[kind].items():
        if name not in payload:
            raise CodecError(RejectReason.MISSING_FIELD, f"{kind}: missing field {name!r}")
        value = payload[name]
        is_bool_mismatch = isinstance(value, bool) != (expected is bool)
        if is_bool_mismatch or not isinstance(value, expected):
            raise CodecError(
                RejectReason.INVALID_FIELD,
                f"{kind}: field {name!r} must be {getattr(expected, '__name__', expected)}, "
                f"got {type(value).__name__}",
            )
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise CodecError(RejectReason.INVALID_FIELD, f"{kind}: field {name!r} is negative")
    for name, expected_type in _OPTIONAL_FIELDS.get(kind, {}).items():
        if name not in payload:
            continue
        value = payload[name]
        if isinstance(value, bool) != (expected_type is bool) or not isinstance(value, expected_type):
            raise CodecError(
                RejectReason.INVALID_FIELD, f"{kind}: field {name!r} must be {expected_type.__name__}"
            )
