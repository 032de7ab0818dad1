"""Round trips of data frames and the checks on BlockHeader and encode_block."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from mpnn_async.errors import InvalidInputError
from mpnn_async.wire import (
    BODY_ALIGNMENT_BYTES,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_ID,
    MAX_NDIM,
    SCHEDULER,
    SUPPORTED_DTYPES,
    Block,
    BlockHeader,
    CodecError,
    MessageId,
    MessageKind,
    RejectReason,
    decode_block,
    encode_block,
)

MAX_SIZE_BYTES = 1 << 24


def make_header(**changes: object) -> BlockHeader:
    fields: dict[str, object] = {
        "kind": MessageKind.ACTIVATION,
        "job": "job-7",
        "step": 3,
        "micro_batch": 2,
        "layer": 1,
        "source": "p0",
        "destination": "p1",
        "attempt": 0,
    }
    fields.update(changes)
    return BlockHeader(**fields)  # type: ignore[arg-type]


def sample_array(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Return an array of `shape` with distinct values (and NaN, Inf, -0.0 for floats)."""
    count = int(np.prod(shape))
    kind = np.dtype(dtype).kind
    if kind == "b":
        values = np.arange(count) % 3 == 0
    elif kind == "f":
        values = np.linspace(-5.0, 7.0, count)
        specials = [np.nan, np.inf, -np.inf, -0.0]
        values[: min(count, len(specials))] = specials[: min(count, len(specials))]
    else:
        values = np.arange(count) * 7 % 251
    return values.astype(dtype).reshape(shape)


def round_trip(array: np.ndarray, header: BlockHeader | None = None) -> Block:
    header = header or make_header()
    frame = encode_block(header, array)
    return decode_block(frame, max_size_bytes=MAX_SIZE_BYTES)


def assert_same_array(decoded: np.ndarray, original: np.ndarray) -> None:
    wire_dtype = original.dtype.newbyteorder("<")
    assert decoded.dtype == wire_dtype
    assert decoded.dtype.str in SUPPORTED_DTYPES
    assert decoded.shape == original.shape
    assert decoded.flags.c_contiguous
    assert decoded.flags.writeable
    assert decoded.base is None, "decoded array should own its memory, not view the frame"
    assert np.array_equal(decoded, original, equal_nan=True)
    expected_bytes = np.ascontiguousarray(original.astype(wire_dtype)).tobytes()
    assert decoded.tobytes() == expected_bytes


WIRE_DTYPES = ["<f4", "<f8", "<i8", "<i4", "|u1", "|b1"]
SHAPES = [(), (0,), (3, 0), (5,), (4, 3), (2, 3, 4)]


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    original = sample_array(dtype, shape)
    block = round_trip(original)
    assert_same_array(block.array, original)
    assert block.header == make_header()


def test_supported_dtypes_cover_the_documented_list() -> None:
    names = {dtype.name for dtype in SUPPORTED_DTYPES.values()}
    assert names == {"float32", "float64", "int64", "int32", "uint8", "bool"}
    assert set(SUPPORTED_DTYPES) == set(WIRE_DTYPES)


LAYOUTS = {
    "fortran": lambda base: np.asfortranarray(base),
    "transposed": lambda base: base.T,
    "strided": lambda base: base[::2, 1::3],
    "columns": lambda base: base[:, 2:5],
    "reversed": lambda base: base[::-1, ::-1],
    "big_endian": lambda base: base.astype(base.dtype.newbyteorder(">")),
    "big_endian_transposed": lambda base: base.astype(base.dtype.newbyteorder(">")).T,
}


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_round_trip_layouts(dtype: str, layout: str) -> None:
    original = LAYOUTS[layout](sample_array(dtype, (6, 7)))
    if layout.startswith("big_endian") and np.dtype(dtype).itemsize > 1:
        assert original.dtype.byteorder == ">"
    block = round_trip(original)
    assert_same_array(block.array, original)


def test_zero_dim_array_keeps_empty_shape() -> None:
    frame = encode_block(make_header(), np.array(2.5, dtype="<f8"))
    header_length = struct.unpack_from("<I", frame, 4)[0]
    fields = orjson.loads(frame[8 : 8 + header_length])
    assert fields["shape"] == []
    block = decode_block(frame, max_size_bytes=MAX_SIZE_BYTES)
    assert block.array.shape == ()
    assert block.array[()] == 2.5


def test_numpy_scalar_encodes_as_zero_dim() -> None:
    block = round_trip(np.float32(1.5))  # type: ignore[arg-type]
    assert block.array.shape == ()
    assert block.array.dtype.str == "<f4"
    assert block.array[()] == np.float32(1.5)


def test_nan_payload_bits_survive() -> None:
    # A NaN with a non-default payload checks that no step converts values.
    bits = np.array([0x7FC00001, 0xFFC12345, 0x7F800000], dtype="<u4")
    original = bits.view("<f4")
    block = round_trip(original)
    assert block.array.view("<u4").tolist() == bits.tolist()


def test_decoded_array_is_writable_copy() -> None:
    original = np.arange(6, dtype="<f4").reshape(2, 3)
    frame = bytearray(encode_block(make_header(), original))
    block = decode_block(frame, max_size_bytes=MAX_SIZE_BYTES)
    block.array[0, 0] = 99.0
    frame[-4:] = b"\x00\x00\x00\x00"
    assert block.array[0, 0] == 99.0
    assert block.array[1, 2] == 5.0, "changing the frame must not change the decoded array"


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda wrap: wrap.__name__)
def test_decode_accepts_bytes_like(wrap: type) -> None:
    original = np.arange(4, dtype="<i8")
    frame = wrap(encode_block(make_header(), original))
    block = decode_block(frame, max_size_bytes=MAX_SIZE_BYTES)
    assert block.array.tolist() == [0, 1, 2, 3]


def test_frame_layout() -> None:
    original = np.arange(3, dtype="<i4")
    frame = encode_block(make_header(extra={"rows": [0, 3]}), original)
    assert frame[:4] == MAGIC
    header_length = struct.unpack_from("<I", frame, 4)[0]
    fields = orjson.loads(frame[8 : 8 + header_length])
    assert fields == {
        "kind": "activation",
        "job": "job-7",
        "step": 3,
        "micro_batch": 2,
        "layer": 1,
        "source": "p0",
        "destination": "p1",
        "attempt": 0,
        "extra": {"rows": [0, 3]},
        "dtype": "<i4",
        "shape": [3],
        "nbytes": 12,
    }
    assert frame[8 + header_length :] == original.tobytes()


def test_empty_extra_is_left_out() -> None:
    frame = encode_block(make_header(), np.zeros(1, dtype="<f4"))
    header_length = struct.unpack_from("<I", frame, 4)[0]
    assert "extra" not in orjson.loads(frame[8 : 8 + header_length])


@pytest.mark.parametrize("kind", list(MessageKind))
def test_round_trip_every_kind_and_extra(kind: MessageKind) -> None:
    header = make_header(
        kind=kind,
        destination=SCHEDULER,
        attempt=4,
        extra={"rows": [0, 64], "columns": (5, 9), "label": "x", "scale": 0.5, "final": True, "none": None},
    )
    block = round_trip(np.ones((2, 2), dtype="<f8"), header)
    assert block.header == header
    assert block.header.kind is kind
    assert block.header.extra["rows"] == (0, 64)
    assert block.header.extra["columns"] == (5, 9)


def test_message_id_fields() -> None:
    header = make_header(kind="gradient", attempt=2)
    assert header.message_id() == MessageId(
        job="job-7",
        step=3,
        micro_batch=2,
        layer=1,
        kind=MessageKind.GRADIENT,
        source="p0",
        attempt=2,
    )
    assert tuple(header.message_id()) == ("job-7", 3, 2, 1, "gradient", "p0", 2)


def test_message_id_ignores_destination() -> None:
    assert make_header(destination="p1").message_id() == make_header(destination="p2").message_id()


def test_header_converts_kind_and_ids() -> None:
    header = make_header(kind="inference", step=np.int64(5), layer=np.uint8(2))
    assert header.kind is MessageKind.INFERENCE
    assert type(header.step) is int
    assert header.step == 5
    assert type(header.layer) is int


def test_header_extra_is_frozen_copy() -> None:
    extra = {"rows": [0, 4]}
    header = make_header(extra=extra)
    extra["rows"].append(8)
    extra["new"] = 1
    assert dict(header.extra) == {"rows": (0, 4)}
    with pytest.raises(TypeError):
        header.extra["rows"] = (1,)  # type: ignore[index]


def test_header_hash_ignores_extra() -> None:
    first = make_header(extra={"rows": [0, 4]})
    second = make_header(extra={"rows": [0, 4]})
    assert first == second
    assert hash(first) == hash(second)
    assert first != make_header(extra={"rows": [0, 5]})


def test_header_repr_shows_ids() -> None:
    header = make_header(extra={"rows": [0, 4]})
    assert repr(header) == (
        "<BlockHeader activation job=job-7 step=3 mb=2 layer=1 p0->p1 attempt=0 extra={'rows': (0, 4)}>"
    )
    block = round_trip(np.zeros((2, 3), dtype="<f4"), header)
    assert repr(block).startswith("<Block <f4[2, 3] <BlockHeader activation")


def test_codec_error_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError) as caught:
        make_header(step=-1)
    assert isinstance(caught.value, CodecError)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith("invalid_field: step = -1")


BAD_IDS = [
    (True, "a boolean"),
    (1.0, "a float"),
    (-1, "-1"),
    (MAX_ID + 1, str(MAX_ID + 1)),
    (None, "null"),
    ("3", "'3'"),
]


@pytest.mark.parametrize("field", ["step", "micro_batch", "layer", "attempt"])
@pytest.mark.parametrize(("value", "shown"), BAD_IDS, ids=repr)
def test_header_rejects_bad_id(field: str, value: object, shown: str) -> None:
    with pytest.raises(CodecError) as caught:
        make_header(**{field: value})
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert f"{field} = " in caught.value.detail
    assert shown in caught.value.detail


def test_header_accepts_max_id() -> None:
    assert make_header(step=MAX_ID).step == MAX_ID


def test_null_id_message_explains_nan() -> None:
    with pytest.raises(CodecError) as caught:
        make_header(step=None)
    assert "NaN" in caught.value.detail


BAD_NAMES = ["", "a*b", "a#b", "a/b", "a b", "-lead", ".hidden", "_x", "p1\n", "ä", "x" * 65, 7, None]


@pytest.mark.parametrize("field", ["job", "source", "destination"])
@pytest.mark.parametrize("value", BAD_NAMES, ids=repr)
def test_header_rejects_bad_name(field: str, value: object) -> None:
    with pytest.raises(CodecError) as caught:
        make_header(**{field: value})
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert caught.value.detail.startswith(f"{field} = ")


@pytest.mark.parametrize("value", ["p", "P-1", "job_2.v3", "9", "x" * 64, SCHEDULER])
def test_header_accepts_good_name(value: str) -> None:
    assert make_header(source=value).source == value


def test_header_rejects_unknown_kind() -> None:
    with pytest.raises(CodecError) as caught:
        make_header(kind="weights")
    assert caught.value.reason is RejectReason.UNKNOWN_KIND
    assert "activation, gradient, inference" in caught.value.detail


def test_header_rejects_non_string_kind() -> None:
    with pytest.raises(CodecError) as caught:
        make_header(kind=1)
    assert caught.value.reason is RejectReason.INVALID_FIELD


@pytest.mark.parametrize(
    ("extra", "reason", "field"),
    [
        ({"scale": float("nan")}, RejectReason.NON_FINITE, "extra.scale"),
        ({"scale": float("inf")}, RejectReason.NON_FINITE, "extra.scale"),
        ({"rows": [0, float("-inf")]}, RejectReason.NON_FINITE, "extra.rows[1]"),
        ({"rows": [[0, 1]]}, RejectReason.INVALID_FIELD, "extra.rows[0]"),
        ({"nested": {"a": 1}}, RejectReason.INVALID_FIELD, "extra.nested"),
        ({"big": 2**64}, RejectReason.INVALID_FIELD, "extra.big"),
        ({"numpy": np.float64(0.5)}, RejectReason.INVALID_FIELD, "extra.numpy"),
        ({"text": "\ud800"}, RejectReason.INVALID_FIELD, "extra.text"),
        ({1: "x"}, RejectReason.INVALID_FIELD, "key of type int"),
        ([("rows", 1)], RejectReason.INVALID_FIELD, "extra = "),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_header_rejects_bad_extra(extra: object, reason: RejectReason, field: str) -> None:
    with pytest.raises(CodecError) as caught:
        make_header(extra=extra)
    assert caught.value.reason is reason
    assert field in caught.value.detail


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(3, dtype=np.float16),
        np.zeros(3, dtype=np.complex64),
        np.zeros(3, dtype=np.int8),
        np.zeros(3, dtype=np.uint16),
        np.array(["a"]),
        np.array([None], dtype=object),
        np.zeros(2, dtype="datetime64[ns]"),
        np.zeros(2, dtype=[("a", "<f4"), ("b", "<f4")]),
    ],
    ids=lambda array: str(array.dtype),
)
def test_encode_rejects_unsupported_dtype(array: np.ndarray) -> None:
    with pytest.raises(CodecError) as caught:
        encode_block(make_header(), array)
    assert caught.value.reason is RejectReason.UNSUPPORTED_DTYPE
    assert "<f4 (float32)" in caught.value.detail


@pytest.mark.parametrize(
    "array",
    [[1.0, 2.0], np.ma.masked_array([1.0, 2.0], mask=[True, False])],
    ids=["list", "masked"],
)
def test_encode_rejects_non_ndarray(array: object) -> None:
    with pytest.raises(CodecError) as caught:
        encode_block(make_header(), array)  # type: ignore[arg-type]
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert "numpy.ndarray" in caught.value.detail


def test_encode_rejects_too_many_dimensions() -> None:
    if np.__version__.startswith("1."):
        pytest.skip("NumPy 1.x cannot create an array with more than 32 dimensions")
    array = np.zeros((1,) * (MAX_NDIM + 1), dtype="<f4")
    with pytest.raises(CodecError) as caught:
        encode_block(make_header(), array)
    assert caught.value.reason is RejectReason.INVALID_FIELD
    assert f"{MAX_NDIM + 1} dimensions" in caught.value.detail


def test_encode_accepts_max_dimensions() -> None:
    array = np.arange(2, dtype="<i4").reshape((1,) * (MAX_NDIM - 1) + (2,))
    assert round_trip(array).array.shape == array.shape


def test_encode_rejects_oversized_header() -> None:
    header = make_header(extra={"note": "x" * MAX_HEADER_BYTES})
    with pytest.raises(CodecError) as caught:
        encode_block(header, np.zeros(1, dtype="<f4"))
    assert caught.value.reason is RejectReason.HEADER_TOO_LARGE
    assert "extra" in caught.value.detail


def test_encode_rejects_non_header() -> None:
    with pytest.raises(TypeError, match="BlockHeader"):
        encode_block({"kind": "activation"}, np.zeros(1))  # type: ignore[arg-type]


def test_encode_contiguous_array_not_modified() -> None:
    original = np.arange(6, dtype="<f8")
    before = original.copy()
    encode_block(make_header(), original)
    assert original.tobytes() == before.tobytes()
    assert original.flags.writeable


@pytest.mark.parametrize("job", ["j", "job-7", "a-much-longer-job-name-0123456789"])
def test_body_starts_aligned(job: str) -> None:
    array = np.arange(12.0).reshape(3, 4)

    frame = encode_block(make_header(job=job), array)

    body_start = len(frame) - array.nbytes
    assert body_start % BODY_ALIGNMENT_BYTES == 0
    assert frame[body_start:] == array.tobytes()
    decoded = decode_block(frame, max_size_bytes=MAX_SIZE_BYTES)
    assert decoded.header.job == job
    np.testing.assert_array_equal(decoded.array, array)


def test_decode_in_place_shares_the_frame() -> None:
    array = np.arange(12.0).reshape(3, 4)
    frame = encode_block(make_header(), array)

    block = decode_block(frame, max_size_bytes=MAX_SIZE_BYTES, copy=False)

    assert np.shares_memory(block.array, np.frombuffer(frame, dtype=np.uint8))
    assert not block.array.flags.writeable
    assert block.array.flags.aligned
    np.testing.assert_array_equal(block.array, array)


def test_decode_in_place_copies_a_bytearray() -> None:
    frame = bytearray(encode_block(make_header(), np.ones((2, 2))))

    block = decode_block(frame, max_size_bytes=MAX_SIZE_BYTES, copy=False)
    frame[-1] ^= 0xFF

    assert block.array.flags.writeable
    np.testing.assert_array_equal(block.array, np.ones((2, 2)))


def test_decode_in_place_copies_a_misaligned_body() -> None:
    # A frame from a sender that does not pad its header: 8 + 139 bytes before the body.
    array = np.arange(4.0)
    fields = make_header().to_json_fields() | {"dtype": "<f8", "shape": [4], "nbytes": 32}
    header_json = orjson.dumps(fields)
    header_json += b" " * (139 - len(header_json))
    frame = struct.pack("<4sI", MAGIC, len(header_json)) + header_json + array.tobytes()

    block = decode_block(frame, max_size_bytes=MAX_SIZE_BYTES, copy=False)

    assert block.array.flags.aligned
    assert block.array.flags.writeable
    assert not np.shares_memory(block.array, np.frombuffer(frame, dtype=np.uint8))
    np.testing.assert_array_equal(block.array, array)
