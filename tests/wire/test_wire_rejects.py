"""Every RejectReason, triggered by a crafted data frame or control message."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from mpnn_async.wire import (
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_NDIM,
    BlockHeader,
    CodecError,
    RejectReason,
    decode_block,
    decode_control,
    encode_block,
    encode_control,
)

MAX_SIZE_BYTES = 1 << 20
BODY = np.arange(6, dtype="<f4").tobytes()


def valid_fields() -> dict[str, Any]:
    return {
        "kind": "gradient",
        "job": "j1",
        "step": 0,
        "micro_batch": 1,
        "layer": 2,
        "source": "scheduler",
        "destination": "p3",
        "attempt": 0,
        "dtype": "<f4",
        "shape": [2, 3],
        "nbytes": 24,
    }


def craft_frame(
    fields: dict[str, Any] | None = None,
    body: bytes = BODY,
    *,
    header_json: bytes | None = None,
    header_length: int | None = None,
    magic: bytes = MAGIC,
) -> bytes:
    """Build a frame by hand, so that any part can be wrong."""
    if header_json is None:
        header_json = orjson.dumps(valid_fields() if fields is None else fields)
    if header_length is None:
        header_length = len(header_json)
    return magic + struct.pack("<I", header_length) + header_json + body


def with_fields(**changes: Any) -> bytes:
    fields = valid_fields()
    fields.update(changes)
    return craft_frame(fields)


def without_field(name: str) -> bytes:
    fields = valid_fields()
    del fields[name]
    return craft_frame(fields)


def decode(frame: bytes, max_size_bytes: int = MAX_SIZE_BYTES) -> None:
    decode_block(frame, max_size_bytes=max_size_bytes)


def test_crafted_frame_is_valid() -> None:
    block = decode_block(craft_frame(), max_size_bytes=MAX_SIZE_BYTES)
    assert block.array.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert block.header.destination == "p3"


def test_bool_body_of_zeros_and_ones_is_valid() -> None:
    frame = with_fields(dtype="|b1", shape=[4], nbytes=4)[: -len(BODY)] + b"\x00\x01\x01\x00"
    block = decode_block(frame, max_size_bytes=MAX_SIZE_BYTES)
    assert block.array.tolist() == [False, True, True, False]


def test_frame_of_exactly_max_size_is_accepted() -> None:
    frame = craft_frame()
    decode_block(frame, max_size_bytes=len(frame))


# Each case: (id, expected reason, a call that must raise, a text the detail must contain).
Case = tuple[str, RejectReason, Callable[[], object], str]

CASES: list[Case] = [
    ("wrong magic", RejectReason.BAD_MAGIC, lambda: decode(craft_frame(magic=b"MPN2")), "b'MPN2'"),
    (
        "control message as data",
        RejectReason.BAD_MAGIC,
        lambda: decode(encode_control("heartbeat", {})),
        "JSON control message",
    ),
    ("empty frame", RejectReason.TRUNCATED_HEADER, lambda: decode(b""), "0 bytes"),
    ("magic prefix only", RejectReason.TRUNCATED_HEADER, lambda: decode(MAGIC[:2]), "2 bytes"),
    ("no length field", RejectReason.TRUNCATED_HEADER, lambda: decode(MAGIC + b"\x05\x00"), "6 bytes"),
    (
        "header past end",
        RejectReason.TRUNCATED_HEADER,
        lambda: decode(craft_frame(body=b"", header_length=len(orjson.dumps(valid_fields())) + 1)),
        "header length field",
    ),
    (
        "header length over cap",
        RejectReason.HEADER_TOO_LARGE,
        lambda: decode(craft_frame(header_length=MAX_HEADER_BYTES + 1)),
        str(MAX_HEADER_BYTES + 1),
    ),
    (
        "encoded header over cap",
        RejectReason.HEADER_TOO_LARGE,
        lambda: encode_block(
            BlockHeader(
                kind="activation",
                job="j",
                step=0,
                micro_batch=0,
                layer=1,
                source="a",
                destination="b",
                extra={"note": "x" * MAX_HEADER_BYTES},
            ),
            np.zeros(1, dtype="<f4"),
        ),
        "encoded header",
    ),
    ("header not json", RejectReason.BAD_JSON, lambda: decode(craft_frame(header_json=b"{kind:")), "not valid JSON"),
    (
        "header not utf8",
        RejectReason.BAD_JSON,
        lambda: decode(craft_frame(header_json=b'{"job": "\xff"}')),
        "not valid JSON",
    ),
    ("header NaN literal", RejectReason.BAD_JSON, lambda: decode(craft_frame(header_json=b"{\"step\": NaN}")), "not valid JSON"),
    ("header is array", RejectReason.NOT_OBJECT, lambda: decode(craft_frame(header_json=b"[1, 2]")), "JSON array"),
    ("header is null", RejectReason.NOT_OBJECT, lambda: decode(craft_frame(header_json=b"null")), "JSON null"),
    ("missing nbytes", RejectReason.MISSING_FIELD, lambda: decode(without_field("nbytes")), "nbytes"),
    ("unknown field", RejectReason.UNKNOWN_FIELD, lambda: decode(with_fields(priority=1)), "'priority'"),
    ("bool step", RejectReason.INVALID_FIELD, lambda: decode(with_fields(step=True)), "step = True (a boolean)"),
    ("float step", RejectReason.INVALID_FIELD, lambda: decode(with_fields(step=1.0)), "step = 1.0 (a float)"),
    ("negative layer", RejectReason.INVALID_FIELD, lambda: decode(with_fields(layer=-1)), "layer = -1"),
    ("null attempt", RejectReason.INVALID_FIELD, lambda: decode(with_fields(attempt=None)), "attempt = null"),
    ("string micro_batch", RejectReason.INVALID_FIELD, lambda: decode(with_fields(micro_batch="1")), "micro_batch = '1'"),
    ("wildcard job", RejectReason.INVALID_FIELD, lambda: decode(with_fields(job="j.*")), "job = 'j.*'"),
    ("slash source", RejectReason.INVALID_FIELD, lambda: decode(with_fields(source="../p")), "source = '../p'"),
    ("empty destination", RejectReason.INVALID_FIELD, lambda: decode(with_fields(destination="")), "destination = ''"),
    ("numeric kind", RejectReason.INVALID_FIELD, lambda: decode(with_fields(kind=1)), "kind = 1"),
    ("numeric dtype", RejectReason.INVALID_FIELD, lambda: decode(with_fields(dtype=4)), "dtype = 4"),
    ("shape not list", RejectReason.INVALID_FIELD, lambda: decode(with_fields(shape="2,3")), "shape = '2,3'"),
    ("negative dimension", RejectReason.INVALID_FIELD, lambda: decode(with_fields(shape=[2, -3])), "shape[1] = -3"),
    ("bool dimension", RejectReason.INVALID_FIELD, lambda: decode(with_fields(shape=[True, 6])), "shape[0] = True"),
    ("float dimension", RejectReason.INVALID_FIELD, lambda: decode(with_fields(shape=[2.0, 3])), "shape[0] = 2.0"),
    (
        "too many dimensions",
        RejectReason.INVALID_FIELD,
        lambda: decode(with_fields(shape=[1] * (MAX_NDIM + 1))),
        f"{MAX_NDIM + 1} dimensions",
    ),
    (
        "empty shape too large for numpy",
        RejectReason.INVALID_FIELD,
        lambda: decode(with_fields(shape=[0, 2**62], nbytes=0)[: -len(BODY)]),
        "too large",
    ),
    ("negative nbytes", RejectReason.INVALID_FIELD, lambda: decode(with_fields(nbytes=-24)), "nbytes = -24"),
    ("extra not object", RejectReason.INVALID_FIELD, lambda: decode(with_fields(extra=[1])), "extra = [1]"),
    ("extra null", RejectReason.INVALID_FIELD, lambda: decode(with_fields(extra=None)), "extra = null"),
    ("nested extra", RejectReason.INVALID_FIELD, lambda: decode(with_fields(extra={"a": {"b": 1}})), "extra.a"),
    ("unknown kind", RejectReason.UNKNOWN_KIND, lambda: decode(with_fields(kind="weights")), "'weights'"),
    ("half float", RejectReason.UNSUPPORTED_DTYPE, lambda: decode(with_fields(dtype="<f2")), "'<f2'"),
    ("big endian", RejectReason.UNSUPPORTED_DTYPE, lambda: decode(with_fields(dtype=">f4")), "'>f4'"),
    ("dtype name", RejectReason.UNSUPPORTED_DTYPE, lambda: decode(with_fields(dtype="float32")), "'float32'"),
    ("object dtype", RejectReason.UNSUPPORTED_DTYPE, lambda: decode(with_fields(dtype="|O")), "'|O'"),
    (
        "array to encode",
        RejectReason.UNSUPPORTED_DTYPE,
        lambda: encode_block(
            BlockHeader(kind="activation", job="j", step=0, micro_batch=0, layer=1, source="a", destination="b"),
            np.zeros(2, dtype=np.float16),
        ),
        "float16",
    ),
    ("shape vs nbytes", RejectReason.SHAPE_MISMATCH, lambda: decode(with_fields(shape=[3, 3])), "takes 36 bytes"),
    ("itemsize vs nbytes", RejectReason.SHAPE_MISMATCH, lambda: decode(with_fields(dtype="<f8")), "takes 48 bytes"),
    ("body cut", RejectReason.TRUNCATED_BODY, lambda: decode(craft_frame()[:-1]), "body is 23 bytes"),
    ("body missing", RejectReason.TRUNCATED_BODY, lambda: decode(craft_frame(body=b"")), "body is 0 bytes"),
    ("extra byte", RejectReason.TRAILING_BYTES, lambda: decode(craft_frame() + b"\x00"), "1 more"),
    (
        "bool byte 2",
        RejectReason.INVALID_VALUE,
        lambda: decode(with_fields(dtype="|b1", shape=[3], nbytes=3)[: -len(BODY)] + b"\x01\x02\x00"),
        "other than 0 or 1",
    ),
    ("frame over limit", RejectReason.OVERSIZED, lambda: decode(craft_frame(), len(craft_frame()) - 1), "above the receiver's limit"),
    # The size check runs first, so even garbage of the wrong size is OVERSIZED.
    ("garbage over limit", RejectReason.OVERSIZED, lambda: decode(b"\xff" * 100, 99), "100 bytes"),
    (
        "control over limit",
        RejectReason.OVERSIZED,
        lambda: decode_control(b'{"type": "x", "pad": "' + b"y" * 100 + b'"}', max_size_bytes=50),
        "above the receiver's limit",
    ),
    (
        "NaN in extra",
        RejectReason.NON_FINITE,
        lambda: BlockHeader(
            kind="activation", job="j", step=0, micro_batch=0, layer=1, source="a", destination="b",
            extra={"loss": float("nan")},
        ),
        "extra.loss = nan",
    ),
    (
        "Inf in control payload",
        RejectReason.NON_FINITE,
        lambda: encode_control("metrics", {"values": [1.0, {"loss": float("inf")}]}),
        "payload.values[1].loss = inf",
    ),
    ("control not json", RejectReason.BAD_JSON, lambda: decode_control(b"{oops", max_size_bytes=100), "not valid JSON"),
    (
        "data frame as control",
        RejectReason.BAD_JSON,
        lambda: decode_control(craft_frame(), max_size_bytes=MAX_SIZE_BYTES),
        "decode_block",
    ),
    ("control is array", RejectReason.NOT_OBJECT, lambda: decode_control(b"[]", max_size_bytes=100), "JSON array"),
    ("control no type", RejectReason.MISSING_FIELD, lambda: decode_control(b'{"a": 1}', max_size_bytes=100), "'type'"),
    ("control type number", RejectReason.INVALID_FIELD, lambda: decode_control(b'{"type": 3}', max_size_bytes=100), "type = 3"),
]


@pytest.mark.parametrize(("reason", "call", "detail_part"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_reject(reason: RejectReason, call: Callable[[], object], detail_part: str) -> None:
    with pytest.raises(CodecError) as caught:
        call()
    assert caught.value.reason is reason
    assert detail_part in caught.value.detail


def test_every_reason_has_a_case() -> None:
    covered = {case[1] for case in CASES}
    assert covered == set(RejectReason)


@pytest.mark.parametrize("name", sorted(valid_fields()))
def test_reject_each_missing_field(name: str) -> None:
    with pytest.raises(CodecError) as caught:
        decode(without_field(name))
    assert caught.value.reason is RejectReason.MISSING_FIELD
    assert caught.value.detail == f"block header has no {name}"


def test_missing_fields_are_all_named() -> None:
    fields = valid_fields()
    del fields["step"]
    del fields["shape"]
    with pytest.raises(CodecError) as caught:
        decode(craft_frame(fields))
    assert caught.value.detail == "block header has no shape, step"


def test_overflowing_float_in_header_is_rejected() -> None:
    # orjson 3.13 rejects 1e400 as invalid JSON. The decoder also checks that parsed
    # floats are finite, in case another orjson version returns inf instead.
    fields_json = orjson.dumps(valid_fields())[:-1] + b', "extra": {"scale": 1e400}}'
    with pytest.raises(CodecError) as caught:
        decode(craft_frame(header_json=fields_json))
    assert caught.value.reason in {RejectReason.BAD_JSON, RejectReason.NON_FINITE}


@pytest.mark.parametrize("max_size_bytes", [0, -1, 1.5, True, None])
def test_decode_rejects_bad_max_size(max_size_bytes: Any) -> None:
    with pytest.raises(ValueError, match="max_size_bytes must be a positive integer"):
        decode_block(craft_frame(), max_size_bytes=max_size_bytes)
    with pytest.raises(ValueError, match="max_size_bytes must be a positive integer"):
        decode_control(b"{}", max_size_bytes=max_size_bytes)


def test_decode_rejects_str_input() -> None:
    with pytest.raises(TypeError):
        decode_block("MPN1", max_size_bytes=100)  # type: ignore[arg-type]
