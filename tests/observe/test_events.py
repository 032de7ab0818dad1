"""Progress events read back from JSON: every field checked, nothing else evaluated."""

from __future__ import annotations

import math

import pytest

from mpnn_async.observe.events import decode_progress, event_from_dict, is_evaluation
from mpnn_async.runtime.progress import ProgressEvent
from mpnn_async.wire import CodecError, RejectReason, encode_control
from tests.observe.events import evaluation_event, step_event

MAX_BYTES = 1 << 20


@pytest.mark.parametrize("event", [step_event(3), evaluation_event(4, loss=0.5, test_loss=0.4, accuracy=0.9)])
def test_wire_round_trip(event):
    body = encode_control("job.progress", event.to_dict())

    assert decode_progress(body, max_size_bytes=MAX_BYTES) == event


def test_store_record_extra_keys_ignored():
    record = step_event(2).to_dict() | {"model": "demo", "workers": {"a": "w1"}}

    assert event_from_dict(record) == step_event(2)


def test_null_loss_reads_as_nan():
    event = ProgressEvent(job="demo", epoch=0, step=1, loss=math.nan)

    parsed = event_from_dict(event.to_dict())

    assert math.isnan(parsed.loss)
    assert not is_evaluation(parsed)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("job", "", RejectReason.INVALID_FIELD),
        ("step", -1, RejectReason.INVALID_FIELD),
        ("step", True, RejectReason.INVALID_FIELD),
        ("epoch", 1.5, RejectReason.INVALID_FIELD),
        ("loss", "0.5", RejectReason.INVALID_FIELD),
        ("samples_per_s", None, RejectReason.INVALID_FIELD),
        ("accuracy", [0.9], RejectReason.INVALID_FIELD),
        ("state", "paused", RejectReason.INVALID_FIELD),
    ],
)
def test_invalid_field_rejected(field, value, reason):
    record = step_event(2).to_dict() | {field: value}

    with pytest.raises(CodecError) as caught:
        event_from_dict(record)

    assert caught.value.reason is reason
    assert field in str(caught.value)


def test_missing_field_rejected():
    record = step_event(2).to_dict()
    del record["total_steps"]

    with pytest.raises(CodecError) as caught:
        event_from_dict(record)

    assert caught.value.reason is RejectReason.MISSING_FIELD
    assert "total_steps" in str(caught.value)


def test_other_message_type_rejected():
    body = encode_control("job.ready", step_event(2).to_dict())

    with pytest.raises(CodecError, match="expected 'job.progress'"):
        decode_progress(body, max_size_bytes=MAX_BYTES)
