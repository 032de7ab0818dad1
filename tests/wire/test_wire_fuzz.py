"""Property tests: random and mutated messages only ever decode to a valid message or raise CodecError.

Hypothesis runs derandomized (a fixed seed) so that CI is stable. To search harder,
raise `max_examples` locally; `pytest --hypothesis-show-statistics` lists how often
each RejectReason came up.
"""

from __future__ import annotations

import struct
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mpnn_async.wire import (
    MAGIC,
    MAX_ID,
    NAME_PATTERN,
    SUPPORTED_DTYPES,
    BlockHeader,
    CodecError,
    ControlMessage,
    MessageKind,
    RejectReason,
    decode_block,
    decode_control,
    encode_block,
    encode_control,
)

MAX_SIZE_BYTES = 1 << 20

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

names = st.from_regex(NAME_PATTERN, fullmatch=True)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
extras = st.dictionaries(st.text(max_size=8), json_scalars | st.lists(json_scalars, max_size=3), max_size=3)
headers = st.builds(
    BlockHeader,
    kind=st.sampled_from(MessageKind),
    job=names,
    step=st.integers(0, MAX_ID),
    micro_batch=st.integers(0, MAX_ID),
    layer=st.integers(0, MAX_ID),
    source=names,
    destination=names,
    attempt=st.integers(0, MAX_ID),
    extra=extras,
)
# Both byte orders, so big-endian input is converted on the way.
array_dtypes = st.sampled_from(list(SUPPORTED_DTYPES.values())).flatmap(
    lambda dtype: st.sampled_from([dtype, dtype.newbyteorder(">")])
)
arrays = hnp.arrays(
    dtype=array_dtypes,
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)
# JSON values for header and payload edits; the edge cases make a near-valid edit likely.
edge_values = st.sampled_from(
    [-1, 0, 1, MAX_ID, MAX_ID + 1, 2**64 - 1, 1.0, True, None, "", "p1", "<f4", "|b1", ">f4", [], [0], [2, 3], {}]
)
json_values = st.recursive(
    json_scalars | edge_values,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def uniform_choice(options: list[Any]) -> st.SearchStrategy[Any]:
    """Pick one option uniformly; sampled_from favours the first options, which starves the others."""
    return st.randoms(use_true_random=True).map(lambda rng: rng.choice(options))


# Per header field, values that are valid or close to valid, so that edits reach the checks
# after JSON parsing (kind, dtype, shape against nbytes, body length) instead of stopping early.
id_edits = uniform_choice([-1, MAX_ID + 1, 1.0, True, None, MAX_ID]) | st.integers(0, 5)
name_edits = uniform_choice(["", "a*", "a b", "a/b", "x" * 65, 1, None]) | names
field_edits = {
    "shape": st.lists(st.integers(0, 6), max_size=4) | uniform_choice([[], "3", [-1], [True], [1.0]]),
    "nbytes": st.integers(0, 600) | uniform_choice([-1, 1.0, None, True]),
    "dtype": uniform_choice([*SUPPORTED_DTYPES, "<f2", ">f8", "float32", "|O", "<u1", 4]),
    "kind": uniform_choice([*MessageKind, "weights", "", "Activation", 0]),
    "extra": extras | json_values,
    "step": id_edits,
    "micro_batch": id_edits,
    "layer": id_edits,
    "attempt": id_edits,
    "job": name_edits,
    "source": name_edits,
    "destination": name_edits,
}


def check_block_outcome(data: bytes) -> None:
    """Decode `data`; a success must be a valid block that survives another round trip."""
    try:
        block = decode_block(data, max_size_bytes=MAX_SIZE_BYTES)
    except CodecError as error:
        assert isinstance(error.reason, RejectReason)
        assert error.detail
        event(f"block rejected: {error.reason}")
        return
    event("block decoded")
    assert isinstance(block.header, BlockHeader)
    assert block.array.dtype.str in SUPPORTED_DTYPES
    assert block.array.flags.c_contiguous
    assert block.array.flags.writeable
    again = decode_block(encode_block(block.header, block.array), max_size_bytes=MAX_SIZE_BYTES)
    assert again.header == block.header
    assert again.array.shape == block.array.shape
    assert again.array.tobytes() == block.array.tobytes()


def check_control_outcome(data: bytes) -> None:
    """Decode `data`; a success must be a control message that survives another round trip."""
    try:
        message = decode_control(data, max_size_bytes=MAX_SIZE_BYTES)
    except CodecError as error:
        assert isinstance(error.reason, RejectReason)
        assert error.detail
        event(f"control rejected: {error.reason}")
        return
    event("control decoded")
    assert NAME_PATTERN.fullmatch(message.kind)
    assert isinstance(message.payload, dict)
    again = decode_control(encode_control(message.kind, message.payload), max_size_bytes=MAX_SIZE_BYTES)
    assert again == message


def split_frame(frame: bytes) -> tuple[dict[str, Any], bytes] | None:
    """Return the header fields and body of a frame whose prefix and header are intact."""
    if len(frame) < 8 or frame[:4] != MAGIC:
        return None
    (length,) = struct.unpack_from("<I", frame, 4)
    try:
        fields = orjson.loads(frame[8 : 8 + length])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(fields, dict):
        return None
    return fields, frame[8 + length :]


def join_frame(fields: Any, body: bytes) -> bytes:
    header_json = orjson.dumps(fields)
    return MAGIC + struct.pack("<I", len(header_json)) + header_json + body


@st.composite
def mutate_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """Apply one to three byte-level mutations: bit flips, cuts, inserts and deletions."""
    result = bytearray(data)
    for operation in draw(st.lists(st.sampled_from(["flip", "truncate", "insert", "delete"]), min_size=1, max_size=3)):
        position = draw(st.integers(0, len(result)))
        if operation == "flip" and result:
            index = min(position, len(result) - 1)
            result[index] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del result[position:]
        elif operation == "insert":
            result[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del result[position : position + draw(st.integers(1, 8))]
    return bytes(result)


@st.composite
def edit_header(draw: st.DrawFn, frame: bytes, keys: list[str]) -> bytes:
    """Change, add or delete one to three of `keys` in the header and rewrite the length field."""
    fields, body = split_frame(frame)  # type: ignore[misc]
    for _ in range(draw(uniform_choice([1, 1, 2, 3]))):
        key = draw(uniform_choice(keys))
        if key in fields and draw(st.sampled_from(["set", "set", "set", "delete"])) == "delete":
            del fields[key]
        else:
            fields[key] = draw(field_edits.get(key, json_values) | json_values)
    return join_frame(fields, body)


@st.composite
def edit_body(draw: st.DrawFn, frame: bytes) -> bytes:
    """Cut, extend or bit-flip the body and leave the header as it is."""
    (length,) = struct.unpack_from("<I", frame, 4)
    body_start = 8 + length
    body = bytearray(frame[body_start:])
    operation = draw(st.sampled_from(["cut", "extend", "flip"]))
    if operation == "cut":
        del body[draw(st.integers(0, max(0, len(body) - 1))) :]
    elif operation == "extend":
        body += draw(st.binary(min_size=1, max_size=8))
    elif body:
        body[draw(st.integers(0, len(body) - 1))] ^= 1 << draw(st.integers(0, 7))
    return frame[:body_start] + bytes(body)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """Return a valid frame, unchanged or after length-field, body or byte-level edits."""
    frame = encode_block(draw(headers), draw(arrays))
    operation = draw(uniform_choice(["length", "body", "bytes", "none"]))
    if operation == "length":
        (length,) = struct.unpack_from("<I", frame, 4)
        new_length = draw(st.integers(0, 2**32 - 1) | st.integers(max(0, length - 4), length + 4))
        frame = frame[:4] + struct.pack("<I", new_length) + frame[8:]
    elif operation == "body":
        frame = draw(edit_body(frame))
    elif operation == "bytes":
        frame = draw(mutate_bytes(frame))
    return frame


@st.composite
def header_edited_frames(draw: st.DrawFn) -> bytes:
    """Return a valid frame after header edits, sometimes followed by a body edit."""
    frame = encode_block(draw(headers), draw(arrays))
    operation = draw(uniform_choice(["any_fields", "array_fields", "replace"]))
    if operation == "any_fields":
        frame = draw(edit_header(frame, [*field_edits, "other"]))
    elif operation == "array_fields":
        # Only dtype, shape and nbytes, so that the edit reaches the size checks.
        frame = draw(edit_header(frame, ["dtype", "shape", "nbytes"]))
    else:
        _, body = split_frame(frame)  # type: ignore[misc]
        frame = join_frame(draw(json_values), body)
    if draw(st.booleans()):
        frame = draw(edit_body(frame))
    return frame


@st.composite
def mutated_controls(draw: st.DrawFn) -> bytes:
    """Return a valid control message after JSON edits or byte mutations."""
    payload = draw(st.dictionaries(st.text(max_size=6).filter(lambda key: key != "type"), json_values, max_size=4))
    data = encode_control(draw(names), payload)
    operation = draw(uniform_choice(["edit", "replace", "none"]))
    if operation == "edit":
        fields = orjson.loads(data)
        key = draw(uniform_choice(["type", "other"]) | st.text(max_size=4))
        if draw(st.booleans()):
            fields.pop(key, None)
        else:
            fields[key] = draw(name_edits | json_values)
        data = orjson.dumps(fields)
    elif operation == "replace":
        data = orjson.dumps(draw(json_values))
    if draw(st.booleans()):
        data = draw(mutate_bytes(data))
    return data


@FUZZ
@given(header=headers, array=arrays)
def test_fuzz_round_trip(header: BlockHeader, array: np.ndarray) -> None:
    block = decode_block(encode_block(header, array), max_size_bytes=MAX_SIZE_BYTES)
    assert block.header == header
    assert block.array.shape == array.shape
    assert block.array.dtype == array.dtype.newbyteorder("<")
    assert np.array_equal(block.array, array, equal_nan=block.array.dtype.kind == "f")
    assert block.array.tobytes() == np.ascontiguousarray(array, dtype=block.array.dtype).tobytes()


@FUZZ
@given(data=st.binary(max_size=200) | st.binary(max_size=200).map(lambda tail: MAGIC + tail))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_block_outcome(data)
    check_control_outcome(data)


@FUZZ
@given(frame=mutated_frames())
def test_fuzz_mutated_frames(frame: bytes) -> None:
    check_block_outcome(frame)
    check_control_outcome(frame)


@FUZZ
@given(frame=header_edited_frames())
def test_fuzz_header_edits(frame: bytes) -> None:
    check_block_outcome(frame)


@FUZZ
@given(data=mutated_controls())
def test_fuzz_mutated_controls(data: bytes) -> None:
    check_control_outcome(data)
    check_block_outcome(data)


@FUZZ
@given(kind=names, payload=st.dictionaries(st.text(max_size=6).filter(lambda key: key != "type"), json_values, max_size=4))
def test_fuzz_control_round_trip(kind: str, payload: dict[str, Any]) -> None:
    message = decode_control(encode_control(kind, payload), max_size_bytes=MAX_SIZE_BYTES)
    assert message == ControlMessage(kind=kind, payload=orjson.loads(orjson.dumps(payload)))
