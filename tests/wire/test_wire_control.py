"""The JSON control-message envelope and how it is distinguished from data frames."""

from __future__ import annotations

import datetime

import numpy as np
import orjson
import pytest

from mpnn_async.wire import (
    MAGIC,
    MAX_JSON_DEPTH,
    BlockHeader,
    CodecError,
    ControlMessage,
    RejectReason,
    decode_control,
    encode_block,
    encode_control,
    is_data_frame,
)

MAX_SIZE_BYTES = 1 << 16


def test_control_round_trip() -> None:
    payload = {
        "worker": "w1",
        "partitions": ["p0", "p1"],
        "queue_depth": {"p0": 3, "p1": 0},
        "load": 0.25,
        "draining": False,
        "note": None,
        "nested": [[1, 2], {"a": [True]}],
    }
    data = encode_control("heartbeat", payload)
    message = decode_control(data, max_size_bytes=MAX_SIZE_BYTES)
    assert message == ControlMessage(kind="heartbeat", payload=payload)
    assert "type" not in message.payload


def test_control_body_is_json_object_with_type() -> None:
    data = encode_control("step_commit", {"job": "j1", "step": 4})
    assert data.startswith(b"{")
    assert orjson.loads(data) == {"type": "step_commit", "job": "j1", "step": 4}


def test_control_tuple_decodes_as_list() -> None:
    message = decode_control(encode_control("x", {"range": (0, 4)}), max_size_bytes=MAX_SIZE_BYTES)
    assert message.payload == {"range": [0, 4]}


def test_control_empty_payload() -> None:
    message = decode_control(encode_control("ping", {}), max_size_bytes=MAX_SIZE_BYTES)
    assert message.kind == "ping"
    assert message.payload == {}


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda wrap: wrap.__name__)
def test_control_decode_accepts_bytes_like(wrap: type) -> None:
    data = wrap(encode_control("ping", {"n": 1}))
    assert decode_control(data, max_size_bytes=MAX_SIZE_BYTES).payload == {"n": 1}


def test_is_data_frame() -> None:
    header = BlockHeader(kind="inference", job="j", step=0, micro_batch=0, layer=0, source="scheduler", destination="p0")
    frame = encode_block(header, np.zeros(2, dtype="<f4"))
    assert is_data_frame(frame)
    assert is_data_frame(bytearray(frame))
    assert is_data_frame(memoryview(frame))
    assert not is_data_frame(encode_control("ping", {}))
    assert not is_data_frame(b"")
    assert not is_data_frame(MAGIC[:3])
    assert not is_data_frame(b"MPN2" + frame[4:])


@pytest.mark.parametrize("kind", ["", "a b", "a*", "x" * 65, 3, None])
def test_encode_rejects_bad_type(kind: object) -> None:
    with pytest.raises(CodecError) as caught:
        encode_control(kind, {})  # type: ignore[arg-type]
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert caught.value.detail.startswith("type = ")


def test_encode_rejects_type_key_in_payload() -> None:
    with pytest.raises(CodecError) as caught:
        encode_control("ping", {"type": "other"})
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert "'type' key" in caught.value.detail


def test_encode_rejects_non_mapping_payload() -> None:
    with pytest.raises(CodecError) as caught:
        encode_control("ping", [1, 2])  # type: ignore[arg-type]
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert "payload = [1, 2]" in caught.value.detail


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"loss": float("nan")}, "payload.loss"),
        ({"losses": [0.5, float("-inf")]}, "payload.losses[1]"),
        ({"a": {"b": {"c": float("inf")}}}, "payload.a.b.c"),
    ],
)
def test_encode_rejects_non_finite(payload: dict[str, object], path: str) -> None:
    with pytest.raises(CodecError) as caught:
        encode_control("metrics", payload)
    assert caught.value.reason is RejectReason.NON_FINITE
    assert caught.value.detail.startswith(f"{path} = ")


@pytest.mark.parametrize(
    ("payload", "detail_part"),
    [
        ({"when": datetime.datetime(2024, 1, 1)}, "type datetime"),
        ({"raw": b"abc"}, "type bytes"),
        ({"set": {1, 2}}, "type set"),
        ({"value": np.float32(1.0)}, ".item()"),
        ({"count": np.int64(3)}, ".item()"),
        ({"big": 2**64}, "64-bit range"),
        ({"small": -(2**63) - 1}, "64-bit range"),
        ({"keys": {1: "a"}}, "key of type int"),
        ({"text": "\udc80"}, "UTF-8"),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_encode_rejects_non_json(payload: dict[str, object], detail_part: str) -> None:
    with pytest.raises(CodecError) as caught:
        encode_control("x", payload)
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert detail_part in caught.value.detail


def test_encode_accepts_64_bit_extremes() -> None:
    payload = {"low": -(2**63), "high": 2**64 - 1}
    message = decode_control(encode_control("x", payload), max_size_bytes=MAX_SIZE_BYTES)
    assert message.payload == payload


def test_encode_rejects_deep_nesting() -> None:
    payload: dict[str, object] = {"a": 1}
    for _ in range(MAX_JSON_DEPTH):
        payload = {"a": payload}
    with pytest.raises(CodecError) as caught:
        encode_control("x", payload)
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert f"deeper than {MAX_JSON_DEPTH}" in caught.value.detail


def test_encode_rejects_cycle() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(CodecError) as caught:
        encode_control("x", {"cycle": cycle})
    assert caught.value.reason is RejectReason.INVALID_FIELD


def test_encode_accepts_max_depth() -> None:
    payload: dict[str, object] = {"a": 1}
    for _ in range(MAX_JSON_DEPTH - 1):  # MAX_JSON_DEPTH nested objects in all
        payload = {"a": payload}
    data = encode_control("x", payload)
    assert decode_control(data, max_size_bytes=MAX_SIZE_BYTES).payload == payload


def test_decode_rejects_deep_nesting() -> None:
    # orjson reads 1000 levels, so the codec's own depth check must reject them, and
    # without RecursionError.
    data = b'{"type": "x", "a": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    with pytest.raises(CodecError) as caught:
        decode_control(data, max_size_bytes=MAX_SIZE_BYTES)
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert "payload.a" in caught.value.detail


@pytest.mark.parametrize("body", [b"[1]", b'"ping"', b"3", b"null", b"true"])
def test_decode_rejects_non_object(body: bytes) -> None:
    with pytest.raises(CodecError) as caught:
        decode_control(body, max_size_bytes=MAX_SIZE_BYTES)
    assert caught.value.reason is RejectReason.NOT_OBJECT


@pytest.mark.parametrize("body", [b"", b"{", b"{'type': 'x'}", b'{"type": "x", "v": NaN}', b'{"type": "x"} {}', b"\xff"])
def test_decode_rejects_bad_json(body: bytes) -> None:
    with pytest.raises(CodecError) as caught:
        decode_control(body, max_size_bytes=MAX_SIZE_BYTES)
    assert caught.value.reason is RejectReason.BAD_JSON


@pytest.mark.parametrize("body", [b'{"type": null}', b'{"type": ""}', b'{"type": "a/b"}', b'{"type": ["x"]}'])
def test_decode_rejects_bad_type(body: bytes) -> None:
    with pytest.raises(CodecError) as caught:
        decode_control(body, max_size_bytes=MAX_SIZE_BYTES)
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert caught.value.detail.startswith("type = ")


def test_decode_size_checked_before_parsing() -> None:
    with pytest.raises(CodecError) as caught:
        decode_control(b"not json at all", max_size_bytes=4)
    assert caught.value.reason is RejectReason.OVERSIZED
