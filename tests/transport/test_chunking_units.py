"""Chunk headers and the splitting of bodies, without a transport."""

from __future__ import annotations

import zlib

import pytest

from mpnn_async.transport import Outgoing
from mpnn_async.transport.base import MAX_CHUNKS_PER_MESSAGE
from mpnn_async.transport.chunking import (
    COUNT_HEADER,
    INDEX_HEADER,
    PUBLISHER_HEADER,
    SEQUENCE_HEADER,
    ChunkHeader,
    ChunkPublisher,
    InvalidChunkHeaderError,
    chunk_count,
    strip_chunk_headers,
)
from mpnn_async.transport.validation import broker_limit_warning
from tests.transport.chunks import random_bytes


@pytest.mark.parametrize(
    ("size", "limit", "expected"),
    [(0, 10, 1), (1, 10, 1), (10, 10, 1), (11, 10, 2), (20, 10, 2), (21, 10, 3), (10**9, 1, 10**9)],
)
def test_chunk_count_table(size, limit, expected):
    assert chunk_count(size, limit) == expected


@pytest.mark.parametrize("size", [11, 20, 21, 99, 1000])
def test_split_covers_body_within_limit(size):
    publisher = ChunkPublisher(max_message_bytes=10)
    body = random_bytes(size)
    message = Outgoing("k", body, headers={"job": "j"}, reply_to="r", correlation_id="c", persistent=False)

    chunks = list(publisher.split(message))
    headers = [ChunkHeader.from_headers(chunk.headers, body_bytes=len(chunk.body)) for chunk in chunks]

    assert b"".join(chunk.body for chunk in chunks) == body
    assert max(len(chunk.body) for chunk in chunks) <= 10
    assert [header.index for header in headers] == list(range(chunk_count(size, 10)))
    assert {header.count for header in headers} == {len(chunks)}
    assert {header.total_bytes for header in headers} == {size}
    assert {header.crc32 for header in headers} == {zlib.crc32(body)}
    assert {header.publisher for header in headers} == {publisher.publisher_id}
    for chunk in chunks:
        assert strip_chunk_headers(chunk.headers) == {"job": "j"}
        assert (chunk.routing_key, chunk.reply_to, chunk.correlation_id, chunk.persistent) == ("k", "r", "c", False)


def test_sequence_grows_per_message():
    publisher = ChunkPublisher(max_message_bytes=10)

    first = next(publisher.split(Outgoing("k", bytes(30))))
    second = next(publisher.split(Outgoing("k", bytes(30))))

    assert first.headers[SEQUENCE_HEADER] + 1 == second.headers[SEQUENCE_HEADER]
    assert first.headers[PUBLISHER_HEADER] == second.headers[PUBLISHER_HEADER]


def test_publishers_have_distinct_ids():
    ids = {ChunkPublisher(max_message_bytes=10).publisher_id for _ in range(50)}

    assert len(ids) == 50


VALID = ChunkHeader(publisher="p1", sequence=3, index=1, count=4, total_bytes=40, crc32=7).to_headers()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({PUBLISHER_HEADER: None}, "x-mpnn-chunk-publisher must be a non-empty string"),
        ({PUBLISHER_HEADER: 5}, "x-mpnn-chunk-publisher must be a non-empty string"),
        ({COUNT_HEADER: "4"}, "x-mpnn-chunk-count must be an integer >= 0, got '4'"),
        ({COUNT_HEADER: True}, "x-mpnn-chunk-count must be an integer >= 0, got True"),
        ({COUNT_HEADER: 1}, "x-mpnn-chunk-count must be from 2 to 65535, got 1"),
        ({COUNT_HEADER: MAX_CHUNKS_PER_MESSAGE + 1}, "must be from 2 to 65535, got 65536"),
        ({INDEX_HEADER: 4}, "x-mpnn-chunk-index 4 is out of range for 4 chunks"),
        ({INDEX_HEADER: -1}, "x-mpnn-chunk-index must be an integer >= 0, got -1"),
        ({SEQUENCE_HEADER: None}, "x-mpnn-chunk-sequence must be an integer >= 0, got None"),
    ],
)
def test_invalid_chunk_headers_raise(changes, message):
    headers = {**VALID, **changes}
    headers = {name: value for name, value in headers.items() if value is not None}

    with pytest.raises(InvalidChunkHeaderError, match=message):
        ChunkHeader.from_headers(headers, body_bytes=10)


def test_chunk_larger_than_total_raises():
    with pytest.raises(InvalidChunkHeaderError, match="chunk body of 41 bytes is larger than the whole body"):
        ChunkHeader.from_headers(VALID, body_bytes=41)


def test_publisher_id_as_bytes_is_read():
    header = ChunkHeader.from_headers({**VALID, PUBLISHER_HEADER: b"p1"}, body_bytes=10)

    assert header.publisher == "p1"


def test_same_message_ignores_index_only():
    header = ChunkHeader.from_headers(VALID, body_bytes=10)
    other_index = ChunkHeader.from_headers({**VALID, INDEX_HEADER: 2}, body_bytes=10)
    other_count = ChunkHeader.from_headers({**VALID, COUNT_HEADER: 5}, body_bytes=10)

    assert header.same_message_as(other_index)
    assert not header.same_message_as(other_count)


@pytest.mark.parametrize(
    ("properties", "max_message_bytes", "warns"),
    [
        ({"product": "RabbitMQ", "version": "4.0.5"}, 128 * 1024 * 1024, True),
        ({"product": "RabbitMQ", "version": "4.1.0"}, 16 * 1024 * 1024, False),
        ({"product": "RabbitMQ", "version": "3.10.8"}, 128 * 1024 * 1024, False),
        ({"product": "RabbitMQ", "version": "unknown"}, 128 * 1024 * 1024, False),
        ({"product": "LavinMQ", "version": "4.0.0"}, 128 * 1024 * 1024, False),
    ],
)
def test_broker_limit_warning_for_rabbitmq_4(properties, max_message_bytes, warns):
    warning = broker_limit_warning(properties, max_message_bytes)

    assert (warning is not None) == warns
    if warns:
        assert "RabbitMQ 4.0.5 rejects bodies over its max_message_size, 16777216 by default" in warning
