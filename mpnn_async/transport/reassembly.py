"""Reassemble chunked messages (see `chunking`) on the consuming side, before the handler runs.

`ChunkAssembler` wraps a consumer's handler. A delivery without chunk headers
goes to the handler unchanged. The chunks of a message are kept, none of them
acknowledged, until the last one arrives. Then the handler gets one
`AssembledDelivery` with the whole body, whose ack, requeue or reject
settles every chunk. A consumer that stops or loses its channel before that
leaves every chunk to the broker, which delivers them all again.

Chunks that were dead-lettered (they carry `x-mpnn-reject-reason`, or
RabbitMQ's `x-death`) reach the handler one by one, unassembled, so a
consumer of the dead-letter queue receives every chunk, including those of
sets that never completed.

What the assembler does with chunks that cannot become a message:

- a duplicate of a chunk it holds, or of a message its handler holds: acked
  (dropped);
- a chunk of a message the handler already acked or rejected: acked, or
  dead-lettered with the same reason;
- every other case is dead-lettered with a `ChunkRejection` reason: a bad
  header, more chunks than the prefetch, a set that a later message of the
  same publisher overtook, a set whose length or CRC-32 is wrong, and the
  newest incomplete set when incomplete sets hold every prefetch slot.

Prefetch rule: a consumer needs a prefetch of at least the chunks of the
messages arriving at once plus the deliveries its handler holds. A message of
more chunks than the prefetch is dead-lettered on arrival. When incomplete
sets alone fill the prefetch, no further chunk can arrive, so the newest set
is dead-lettered and the others can complete. When the handler holds
deliveries as well, the assembler cannot tell a slow handler from a
deadlock, so the rule is the caller's to keep.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from mpnn_async.transport.base import REJECT_REASON_HEADER, Delivery, Handler, call_handler
from mpnn_async.transport.chunking import (
    COUNT_HEADER,
    PUBLISHER_HEADER,
    SEQUENCE_HEADER,
    ChunkHeader,
    InvalidChunkHeaderError,
    strip_chunk_headers,
)

__all__ = ["AssembledDelivery", "ChunkAssembler", "ChunkRejection"]

log = logging.getLogger(__name__)

# Messages whose outcome (ack, or reject with its reason) is remembered, so
# that late copies of their chunks are settled the same way.
_MAX_REMEMBERED_MESSAGES = 4096

MessageKey = tuple[str, int]

# The header RabbitMQ adds to a message it dead-letters itself (a reject
# without requeue from another client, an expired TTL, a delivery limit).
_BROKER_DEATH_HEADER = "x-death"


class ChunkRejection(enum.Enum):
    """Reasons (`x-mpnn-reject-reason`) for dead-lettering chunks."""

    # A chunk header is missing, of the wrong type, out of range, or disagrees with earlier chunks of its message.
    INVALID_HEADER = "invalid-chunk-header"
    # The message has more chunks than the consumer's prefetch, so they can never all be held at once.
    COUNT_OVER_PREFETCH = "chunk-count-over-prefetch"
    # Incomplete sets held every prefetch slot, so no further chunk could arrive; this set was the newest.
    PREFETCH_FULL = "chunks-fill-prefetch"
    # A chunk of a later message of the same publisher arrived first, so the rest of this set will not come.
    INCOMPLETE = "chunk-set-incomplete"
    # The reassembled body's length or CRC-32 differs from what the chunk headers state.
    CORRUPT = "chunk-set-corrupt"


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    """The settlement of a whole message: ack, or reject with a reason."""

    action: Literal["ack", "reject"]
    reason: str = ""
    detail: str = ""


_ACKED = _Outcome("ack")


@dataclasses.dataclass(slots=True)
class _PartialMessage:
    """The chunks received so far of one message, by index."""

    header: ChunkHeader
    chunks: dict[int, Delivery] = dataclasses.field(default_factory=dict)

    @property
    def is_complete(self) -> bool:
        return len(self.chunks) == self.header.count


@dataclasses.dataclass(frozen=True, slots=True)
class _Settle:
    """I/O requested by a state change: settle these chunk deliveries as `outcome` states."""

    deliveries: tuple[Delivery, ...]
    outcome: _Outcome
    message_id: str


class AssembledDelivery(Delivery):
    """A whole message reassembled from its chunk deliveries; settling it settles every chunk."""

    __slots__ = (
        "_on_settled",
        "_state",
        "body",
        "chunks",
        "correlation_id",
        "headers",
        "key",
        "persistent",
        "queue",
        "redelivered",
        "reply_to",
        "routing_key",
    )

    def __init__(
        self,
        chunks: Sequence[Delivery],
        body: bytes,
        *,
        key: MessageKey,
        on_settled: Callable[[AssembledDelivery, _Outcome | None], Awaitable[None]],
    ) -> None:
        first = chunks[0]
        self.body = body
        self.headers = strip_chunk_headers(first.headers)
        self.routing_key = first.routing_key
        self.redelivered = any(chunk.redelivered for chunk in chunks)
        self.persistent = first.persistent
        self.reply_to = first.reply_to
        self.correlation_id = first.correlation_id
        self.queue = first.queue
        # In index order.
        self.chunks = tuple(chunks)
        self.key = key
        self._on_settled = on_settled
        self._state: Literal["pending", "settled"] = "pending"

    def __repr__(self) -> str:
        return (
            f"<AssembledDelivery queue={self.queue} routing_key={self.routing_key} "
            f"chunks={len(self.chunks)} bytes={len(self.body)} {self._state}>"
        )

    @property
    def is_settled(self) -> bool:
        return self._state == "settled"

    @property
    def is_stale(self) -> bool:
        return any(chunk.is_stale for chunk in self.chunks)

    async def ack(self) -> None:
        self._check_pending("ack")
        self._state = "settled"
        for chunk in self.chunks:
            if not chunk.is_settled:
                await chunk.ack()
        await self._on_settled(self, _ACKED)

    async def requeue(self) -> None:
        self._check_pending("requeue")
        self._state = "settled"
        # The in-process transport puts each requeued message at the head of
        # its queue, so the last chunk goes first to keep the index order.
        for chunk in reversed(self.chunks):
            if not chunk.is_settled:
                await chunk.requeue()
        await self._on_settled(self, None)

    async def reject(self, reason: str, detail: str = "") -> None:
        self._check_pending("reject")
        # A failing chunk reject raises here and leaves this delivery
        # pending; calling reject again settles the chunks still unsettled.
        for chunk in self.chunks:
            if not chunk.is_settled:
                await chunk.reject(reason, detail)
        self._state = "settled"
        await self._on_settled(self, _Outcome("reject", reason, detail))

    def _check_pending(self, action: str) -> None:
        if self._state != "pending":
            raise RuntimeError(f"{action} on a delivery that was already settled: {self!r}")


class ChunkAssembler:
    """A consumer's handler wrapper that passes whole messages through and reassembles chunked ones.

    Each consumer has its own assembler; it runs in the consumer's handler
    loop, one delivery at a time.
    """

    def __init__(self, handler: Handler, *, prefetch: int, queue: str) -> None:
        self.handler = handler
        self.prefetch = prefetch
        self.queue = queue
        # The consumer tag, for logs; set by the transport once the broker has assigned it.
        self.consumer_tag = ""
        # In the order their first chunk arrived.
        self._partial: dict[MessageKey, _PartialMessage] = {}
        self._held_chunks = 0
        # Whole messages handed to the handler and not settled yet.
        self._handed: dict[MessageKey, AssembledDelivery] = {}
        self._outcomes: collections.OrderedDict[MessageKey, _Outcome] = collections.OrderedDict()
        self.counters = {"assembled": 0, "duplicate_chunks": 0, "dead_lettered_messages": 0}

    def __repr__(self) -> str:
        return (
            f"<ChunkAssembler queue={self.queue} partial={len(self._partial)} "
            f"held_chunks={self._held_chunks}/{self.prefetch} handed={len(self._handed)}>"
        )

    def __call__(self, delivery: Delivery) -> Awaitable[None]:
        # NOTE: the hot path. A whole message costs one header lookup and
        # no extra coroutine: the handler's own awaitable is returned.
        headers = delivery.headers
        if headers and COUNT_HEADER in headers:
            return self._receive_chunk(delivery)
        return self.handler(delivery)

    # -- receiving -------------------------------------------------------------------------

    async def _receive_chunk(self, delivery: Delivery) -> None:
        if REJECT_REASON_HEADER in delivery.headers or _BROKER_DEATH_HEADER in delivery.headers:
            # A dead-lettered chunk, read from the dead-letter queue: handed over as it
            # is, because that queue also contains chunks of sets that never completed.
            await call_handler(self.handler, delivery, consumer_tag=self.consumer_tag or self.queue)
            return
        try:
            header = ChunkHeader.from_headers(delivery.headers, body_bytes=len(delivery.body))
        except InvalidChunkHeaderError as error:
            message_id = _describe_chunk(delivery.headers)
            await self._perform(
                self._dead_letter_now((delivery,), message_id, ChunkRejection.INVALID_HEADER, str(error))
            )
            return
        settles, complete = self._admit(delivery, header)
        for settle in settles:
            await self._perform(settle)
        if complete is not None:
            await self._hand_over(complete)

    def _admit(
        self, delivery: Delivery, header: ChunkHeader
    ) -> tuple[list[_Settle], _PartialMessage | None]:
        """Record one chunk; return the settles to perform and the message it completed, if any.

        Changes state only, without awaiting, so that a settle running in
        another task never finds a half-made change.
        """
        self._forget_stale()
        key = header.message_key
        outcome = self._outcomes.get(key)
        if outcome is not None:
            if outcome.action == "ack":
                self.counters["duplicate_chunks"] += 1
            return [_Settle((delivery,), outcome, header.message_id)], None
        if header.count > self.prefetch:
            detail = (
                f"message {header.message_id} has {header.count} chunks but the consumer's prefetch is "
                f"{self.prefetch}; raise the prefetch above {header.count} plus the deliveries the "
                "handler holds, or raise max_message_bytes with the broker's max_message_size"
            )
            return [self._reject_message(key, (delivery,), header, ChunkRejection.COUNT_OVER_PREFETCH, detail)], None
        if key in self._handed:
            self.counters["duplicate_chunks"] += 1
            return [_Settle((delivery,), _ACKED, header.message_id)], None

        settles: list[_Settle] = []
        partial = self._partial.get(key)
        if partial is None:
            settles.extend(self._drop_overtaken(header))
            partial = self._partial[key] = _PartialMessage(header)
        elif not partial.header.same_message_as(header):
            detail = (
                f"chunk {header.index} of message {header.message_id} disagrees with its earlier chunks: "
                f"{header} != {partial.header}"
            )
            return [self._dead_letter_now((delivery,), header.message_id, ChunkRejection.INVALID_HEADER, detail)], None
        if header.index in partial.chunks:
            self.counters["duplicate_chunks"] += 1
            settles.append(_Settle((delivery,), _ACKED, header.message_id))
            return settles, None

        partial.chunks[header.index] = delivery
        self._held_chunks += 1
        if partial.is_complete:
            self._take_partial(key)
            return settles, partial
        if self._held_chunks >= self.prefetch:
            settles.append(self._drop_newest_partial())
        return settles, None

    def _forget_stale(self) -> None:
        """Forget chunks and handed messages whose channel closed: the broker delivers them again."""
        for key, partial in list(self._partial.items()):
            stale = [index for index, chunk in partial.chunks.items() if chunk.is_stale]
            for index in stale:
                del partial.chunks[index]
            self._held_chunks -= len(stale)
            if not partial.chunks:
                del self._partial[key]
        for key, handed in list(self._handed.items()):
            if handed.is_stale:
                del self._handed[key]

    def _drop_overtaken(self, header: ChunkHeader) -> list[_Settle]:
        """Dead-letter the incomplete sets of `header`'s publisher that an earlier sequence number names.

        A publisher sends every chunk of a message before the next message's
        first chunk, so their remaining chunks will not arrive: the publish
        failed midway, or another consumer of the queue took them.

        NOTE: an incomplete set whose publisher never publishes again keeps
        its prefetch slots until this consumer stops; there is no timeout.
        """
        settles = []
        for key, partial in list(self._partial.items()):
            earlier = partial.header
            if earlier.publisher != header.publisher or earlier.sequence >= header.sequence:
                continue
            self._take_partial(key)
            detail = (
                f"message {earlier.message_id} got {len(partial.chunks)} of {earlier.count} chunks before "
                f"chunk {header.index} of the same publisher's later message {header.message_id}; the "
                "publish failed midway, or another consumer of the queue took the other chunks"
            )
            settles.append(
                self._reject_message(
                    key, tuple(partial.chunks.values()), earlier, ChunkRejection.INCOMPLETE, detail
                )
            )
        return settles

    def _drop_newest_partial(self) -> _Settle:
        key, partial = next(reversed(self._partial.items()))
        self._take_partial(key)
        detail = (
            f"incomplete chunk sets held all {self.prefetch} prefetch slots of the consumer, so no further "
            f"chunk could arrive; message {partial.header.message_id} had {len(partial.chunks)} of "
            f"{partial.header.count} chunks; raise the prefetch above the chunks of the messages "
            "in flight at once plus the deliveries the handler holds"
        )
        return self._reject_message(
            key, tuple(partial.chunks.values()), partial.header, ChunkRejection.PREFETCH_FULL, detail
        )

    def _take_partial(self, key: MessageKey) -> _PartialMessage:
        partial = self._partial.pop(key)
        self._held_chunks -= len(partial.chunks)
        return partial

    # -- handing over ----------------------------------------------------------------------

    async def _hand_over(self, partial: _PartialMessage) -> None:
        header = partial.header
        chunks = [partial.chunks[index] for index in range(header.count)]
        body = b"".join(chunk.body for chunk in chunks)
        crc32 = zlib.crc32(body)
        if len(body) != header.total_bytes or crc32 != header.crc32:
            detail = (
                f"message {header.message_id} reassembled to {len(body)} bytes with CRC-32 {crc32}, "
                f"but its chunk headers state {header.total_bytes} bytes with CRC-32 {header.crc32}"
            )
            await self._perform(
                self._reject_message(header.message_key, tuple(chunks), header, ChunkRejection.CORRUPT, detail)
            )
            return
        assembled = AssembledDelivery(chunks, body, key=header.message_key, on_settled=self._on_settled)
        self._handed[header.message_key] = assembled
        self.counters["assembled"] += 1
        log.debug(
            "chunks.assembled queue=%s message=%s chunks=%d bytes=%d",
            self.queue,
            header.message_id,
            header.count,
            len(body),
        )
        await call_handler(self.handler, assembled, consumer_tag=self.consumer_tag or self.queue)

    async def _on_settled(self, assembled: AssembledDelivery, outcome: _Outcome | None) -> None:
        """Record how the handler settled a whole message (`None`: requeued) and settle its late chunk copies."""
        key = assembled.key
        if self._handed.get(key) is assembled:
            del self._handed[key]
        if outcome is None:
            # Requeued: its chunks come back and are reassembled.
            return
        self._remember(key, outcome)
        partial = self._partial.get(key)
        if partial is None:
            return
        self._take_partial(key)
        if outcome.action == "ack":
            self.counters["duplicate_chunks"] += len(partial.chunks)
        await self._perform(_Settle(tuple(partial.chunks.values()), outcome, partial.header.message_id))

    # -- settling --------------------------------------------------------------------------

    def _reject_message(
        self,
        key: MessageKey,
        deliveries: tuple[Delivery, ...],
        header: ChunkHeader,
        reason: ChunkRejection,
        detail: str,
    ) -> _Settle:
        """Dead-letter a message's chunks, and remember it so that its later chunks follow them."""
        outcome = _Outcome("reject", reason.value, detail)
        self._remember(key, outcome)
        return self._dead_letter_now(deliveries, header.message_id, reason, detail)

    def _dead_letter_now(
        self, deliveries: tuple[Delivery, ...], message_id: str, reason: ChunkRejection, detail: str
    ) -> _Settle:
        self.counters["dead_lettered_messages"] += 1
        level = logging.ERROR if reason in _CONFIGURATION_REJECTIONS else logging.WARNING
        log.log(
            level,
            "chunks.rejected queue=%s message=%s chunks=%d reason=%s detail=%s",
            self.queue,
            message_id,
            len(deliveries),
            reason.value,
            detail,
        )
        return _Settle(deliveries, _Outcome("reject", reason.value, detail), message_id)

    def _remember(self, key: MessageKey, outcome: _Outcome) -> None:
        self._outcomes[key] = outcome
        self._outcomes.move_to_end(key)
        while len(self._outcomes) > _MAX_REMEMBERED_MESSAGES:
            self._outcomes.popitem(last=False)

    async def _perform(self, settle: _Settle) -> None:
        for delivery in settle.deliveries:
            if delivery.is_settled:
                continue
            try:
                if settle.outcome.action == "ack":
                    await delivery.ack()
                else:
                    await delivery.reject(settle.outcome.reason, settle.outcome.detail)
            except Exception:
                log.exception(
                    "chunks.settle_failed queue=%s message=%s action=%s; the chunk stays unacknowledged "
                    "until its channel closes",
                    self.queue,
                    settle.message_id,
                    settle.outcome.action,
                )


# Rejections that mean the consumer's prefetch or the broker limit is set wrong.
_CONFIGURATION_REJECTIONS = frozenset({ChunkRejection.COUNT_OVER_PREFETCH, ChunkRejection.PREFETCH_FULL})


def _describe_chunk(headers: Mapping[str, Any]) -> str:
    """Return a best-effort message id from chunk headers that failed to parse, for logs."""
    return f"{headers.get(PUBLISHER_HEADER)!s}-{headers.get(SEQUENCE_HEADER)!s}"
