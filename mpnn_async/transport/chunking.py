"""Split a body over the broker's maximum message size into chunks: the header format and the publishing side.

RabbitMQ closes the channel of a publish whose body exceeds its
`max_message_size` (128 MiB by default on 3.x, 16 MiB from 4.0). So a
transport publishes a larger body as N chunk messages, each an ordinary
message of at most `max_message_bytes` body bytes, and its consumers
reassemble them (`reassembly`) before the handler runs. The runtime above
publishes one body and receives one body either way.

Every chunk carries the original message's headers and properties plus the
`x-mpnn-chunk-*` headers below. A message is identified by its publisher (a
random id per transport object) and a sequence number that grows with each
chunked message of that publisher. A publisher sends the chunks of one
message before any chunk of its next chunked message, under a lock in
`ChunkPublisher`. So a queue receives each publisher's chunk sets one after
the other, and the consumer relies on that to detect a set whose remaining
chunks will never come.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import secrets
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from mpnn_async.transport.base import MAX_CHUNKS_PER_MESSAGE, Outgoing

__all__ = [
    "CHUNK_HEADER_PREFIX",
    "COUNT_HEADER",
    "CRC32_HEADER",
    "INDEX_HEADER",
    "PUBLISHER_HEADER",
    "SEQUENCE_HEADER",
    "TOTAL_BYTES_HEADER",
    "ChunkHeader",
    "ChunkPublisher",
    "InvalidChunkHeaderError",
    "chunk_count",
    "strip_chunk_headers",
]

CHUNK_HEADER_PREFIX = "x-mpnn-chunk-"
# Random id of the publishing transport object (16 hex digits).
PUBLISHER_HEADER = "x-mpnn-chunk-publisher"
# Number of the chunked message among its publisher's chunked messages, from 1.
SEQUENCE_HEADER = "x-mpnn-chunk-sequence"
# Position of this chunk's bytes in the message body, from 0.
INDEX_HEADER = "x-mpnn-chunk-index"
# Chunks in the message; consumers test for this header to tell a chunk from a whole message.
COUNT_HEADER = "x-mpnn-chunk-count"
# Length of the whole body in bytes.
TOTAL_BYTES_HEADER = "x-mpnn-chunk-total-bytes"
# CRC-32 (zlib.crc32) of the whole body.
CRC32_HEADER = "x-mpnn-chunk-crc32"

_INTEGER_HEADERS = (SEQUENCE_HEADER, INDEX_HEADER, COUNT_HEADER, TOTAL_BYTES_HEADER, CRC32_HEADER)

# Bytes of chunks a publisher has in flight at once (sliced, sent, awaiting
# their confirms), so that a large body costs at most about this much more
# memory while it is published. At least one chunk is always in flight.
_IN_FLIGHT_BYTES = 64 * 1024 * 1024
_MAX_CHUNKS_IN_FLIGHT = 8


class InvalidChunkHeaderError(ValueError):
    """A message's `x-mpnn-chunk-*` headers are missing, of the wrong type or inconsistent."""


def chunk_count(size_bytes: int, max_message_bytes: int) -> int:
    """Return the number of messages a body of `size_bytes` takes: 1 when it fits in one."""
    return max(1, -(-size_bytes // max_message_bytes))


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The chunk headers of one chunk message."""

    publisher: str
    sequence: int
    index: int
    count: int
    total_bytes: int
    crc32: int

    @property
    def message_key(self) -> tuple[str, int]:
        """The id of the whole message: publisher and sequence number."""
        return (self.publisher, self.sequence)

    @property
    def message_id(self) -> str:
        """The message key as text for logs and dead-letter details."""
        return f"{self.publisher}-{self.sequence}"

    def to_headers(self) -> dict[str, Any]:
        return {
            PUBLISHER_HEADER: self.publisher,
            SEQUENCE_HEADER: self.sequence,
            INDEX_HEADER: self.index,
            COUNT_HEADER: self.count,
            TOTAL_BYTES_HEADER: self.total_bytes,
            CRC32_HEADER: self.crc32,
        }

    def same_message_as(self, other: ChunkHeader) -> bool:
        """Return whether both chunks describe the same whole message (all but the index agree)."""
        return dataclasses.replace(other, index=self.index) == self

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any], *, body_bytes: int) -> ChunkHeader:
        """Parse and check the chunk headers of a received chunk of `body_bytes` bytes.

        Raises InvalidChunkHeaderError naming the first header that is
        missing, of the wrong type or out of range.
        """
        publisher = headers.get(PUBLISHER_HEADER)
        if isinstance(publisher, bytes):
            publisher = publisher.decode("utf-8", "replace")
        if not isinstance(publisher, str) or not publisher:
            raise InvalidChunkHeaderError(f"{PUBLISHER_HEADER} must be a non-empty string, got {publisher!r}")
        values: dict[str, int] = {}
        for name in _INTEGER_HEADERS:
            value = headers.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidChunkHeaderError(f"{name} must be an integer >= 0, got {value!r}")
            values[name] = value
        header = cls(
            publisher=publisher,
            sequence=values[SEQUENCE_HEADER],
            index=values[INDEX_HEADER],
            count=values[COUNT_HEADER],
            total_bytes=values[TOTAL_BYTES_HEADER],
            crc32=values[CRC32_HEADER],
        )
        header._check_ranges(body_bytes)
        return header

    def _check_ranges(self, body_bytes: int) -> None:
        if not 2 <= self.count <= MAX_CHUNKS_PER_MESSAGE:
            raise InvalidChunkHeaderError(
                f"{COUNT_HEADER} must be from 2 to {MAX_CHUNKS_PER_MESSAGE}, got {self.count}"
            )
        if self.index >= self.count:
            raise InvalidChunkHeaderError(
                f"{INDEX_HEADER} {self.index} is out of range for {self.count} chunks"
            )
        if body_bytes > self.total_bytes:
            raise InvalidChunkHeaderError(
                f"the chunk body of {body_bytes} bytes is larger than the whole body "
                f"({TOTAL_BYTES_HEADER} {self.total_bytes})"
            )
        if self.crc32 > 0xFFFFFFFF:
            raise InvalidChunkHeaderError(f"{CRC32_HEADER} {self.crc32} does not fit 32 bits")


def strip_chunk_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Return the headers of the original message: `headers` without the chunk headers."""
    return {name: value for name, value in headers.items() if not name.startswith(CHUNK_HEADER_PREFIX)}


class ChunkPublisher:
    """The publishing side of one transport: numbers its chunked messages and cuts each body into chunks."""

    def __init__(self, *, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.publisher_id = secrets.token_hex(8)
        self._sequence = itertools.count(1)
        # Held while the chunks of one message are published, so that chunks
        # of two messages never interleave in a queue.
        self._lock = asyncio.Lock()
        self._chunks_in_flight = max(1, min(_MAX_CHUNKS_IN_FLIGHT, _IN_FLIGHT_BYTES // max_message_bytes))
        self.messages_chunked = 0

    def __repr__(self) -> str:
        return (
            f"<ChunkPublisher {self.publisher_id} max_message_bytes={self.max_message_bytes} "
            f"messages_chunked={self.messages_chunked}>"
        )

    def split(self, message: Outgoing) -> Iterator[Outgoing]:
        """Yield the chunk messages of `message` in index order, each body sliced when its turn comes.

        The caller checked the body's size (`validate_outgoing`) and that it
        is over `max_message_bytes`.
        """
        body = message.body
        size = self.max_message_bytes
        count = chunk_count(len(body), size)
        first = ChunkHeader(
            publisher=self.publisher_id,
            sequence=next(self._sequence),
            index=0,
            count=count,
            total_bytes=len(body),
            crc32=zlib.crc32(body),
        )
        self.messages_chunked += 1
        for index in range(count):
            chunk_headers = dataclasses.replace(first, index=index).to_headers()
            yield dataclasses.replace(
                message,
                body=body[index * size : (index + 1) * size],
                headers={**message.headers, **chunk_headers},
            )

    async def publish(self, message: Outgoing, publish_one: Callable[[Outgoing], Awaitable[None]]) -> None:
        """Publish the chunks of `message` with `publish_one`, a few at a time, and wait for every confirm.

        Raises the first failure of `publish_one`; the chunks not yet
        published are then dropped. Consumers dead-letter the chunks that
        did arrive once the next chunked message of this publisher reaches them.
        """
        async with self._lock:
            window = asyncio.Semaphore(self._chunks_in_flight)
            chunks = self.split(message)

            async def send_next() -> None:
                # Slicing happens only after a window slot is free, which bounds the memory in use.
                async with window:
                    await publish_one(next(chunks))

            count = chunk_count(len(message.body), self.max_message_bytes)
            tasks = [asyncio.create_task(send_next()) for _ in range(count)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
