"""Read progress events back from the wire or the store, checking every field.

The scheduler sends `ProgressEvent.to_dict()` as a `job.progress` control
message and keeps the same dict (plus `model` and `workers`) as the latest
progress record in the store. A watcher reads either form here. A field of
the wrong type raises CodecError naming it, so a bad message can be
dead-lettered with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mpnn_async.runtime.progress import ProgressEvent
from mpnn_async.wire import CodecError, RejectReason, decode_control

__all__ = ["PROGRESS_TYPE", "RUNNING", "FINISHED", "FAILED", "ENDED", "event_from_dict", "decode_progress", "is_evaluation"]

PROGRESS_TYPE = "job.progress"
RUNNING = "running"
FINISHED = "finished"
# The job stopped with an error; a later `mpnn resume` or resubmission may continue it.
FAILED = "failed"
# States after which no more events of this run come.
ENDED = (FINISHED, FAILED)



def decode_progress(body: bytes, *, max_size_bytes: int) -> ProgressEvent:
    """Decode one `job.progress` message; raise CodecError with the reason."""
    message = decode_control(body, max_size_bytes=max_size_bytes)
    if message.kind != PROGRESS_TYPE:
        raise CodecError(
            RejectReason.INVALID_FIELD, f"type is {message.kind!r}, expected {PROGRESS_TYPE!r}"
        )
    return event_from_dict(message.payload)


def event_from_dict(data: Mapping[str, Any]) -> ProgressEvent:
    """Return the ProgressEvent in `data` (a message payload or a store record); ignore other keys."""
    job = _required(data, "job")
    if not isinstance(job, str) or not job:
        raise CodecError(RejectReason.INVALID_FIELD, f"job = {job!r}; expected a non-empty string")
    state = _required(data, "state")
    if state not in (RUNNING, *ENDED):
        raise CodecError(
            RejectReason.INVALID_FIELD, f"state = {state!r}; expected {RUNNING!r}, {FINISHED!r} or {FAILED!r}"
        )
    loss = _optional(data, "loss")
    return ProgressEvent(
        job=job,
        state=state,
        epoch=_integer(data, "epoch"),
        step=_integer(data, "step"),
        total_steps=_integer(data, "total_steps"),
        loss=math.nan if loss is None else loss,
        samples_per_s=_finite(data, "samples_per_s"),
        time_s=_finite(data, "time_s"),
        test_loss=_optional(data, "test_loss"),
        accuracy=_optional(data, "accuracy"),
    )


def is_evaluation(event: ProgressEvent) -> bool:
    """Return whether `event` reports an evaluation of the test split (the final event repeats the last one).

    NOTE: without a test split the scheduler's evaluation event has no test
    loss and no accuracy, so once it went through JSON it reads as a step.
    """
    return event.accuracy is not None or event.test_loss is not None


def _required(data: Mapping[str, Any], name: str) -> Any:
    if name not in data:
        raise CodecError(RejectReason.MISSING_FIELD, f"progress event has no {name!r} field")
    return data[name]


def _integer(data: Mapping[str, Any], name: str) -> int:
    value = _required(data, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CodecError(RejectReason.INVALID_FIELD, f"{name} = {value!r}; expected an integer >= 0")
    return value


def _finite(data: Mapping[str, Any], name: str) -> float:
    value = _required(data, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CodecError(RejectReason.INVALID_FIELD, f"{name} = {value!r}; expected a finite number")
    return float(value)


def _optional(data: Mapping[str, Any], name: str) -> float | None:
    # `to_dict` writes NaN as null, so `loss`, `test_loss` and `accuracy` may be null.
    if _required(data, name) is None:
        return None
    return _finite(data, name)
