"""A small Python client for inference requests (AMQP request/reply)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import numpy as np

from mpnn_async.errors import MpnnError
from mpnn_async.runtime.protocol import inference_routing_key
from mpnn_async.runtime.serving import SNAPSHOT_HEADER
from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Delivery, Outgoing, Transport, UnroutableError
from mpnn_async.wire import BlockHeader, MessageKind, decode_block, decode_control, encode_block, is_data_frame

__all__ = ["InferenceClient", "InferenceError"]

log = logging.getLogger(__name__)


class InferenceError(MpnnError):
    """Error reply from the server, or no reply in time."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"inference failed ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class InferenceClient:
    """Sends input blocks to `mpnn serve` and awaits the outputs.

    Replies come back on an exclusive queue bound to a routing key of the
    client's own (`reply.<uuid>`), which each request names in `reply_to`.
    """

    def __init__(self, transport: Transport, *, model: str, timeout_s: float = 30.0) -> None:
        self.transport = transport
        self.model = model
        self.timeout_s = timeout_s
        self.last_snapshot: str | None = None
        self._reply_key = f"reply.{uuid.uuid4().hex}"
        self._replies: dict[str, asyncio.Future[Delivery]] = {}
        self._tag: str | None = None
        self._queue: str | None = None
        self._owns_transport = False

    def __repr__(self) -> str:
        return f"<InferenceClient model={self.model} pending={len(self._replies)}>"

    @classmethod
    async def connect(
        cls, broker_url: str | None, *, namespace: str, model: str, timeout_s: float = 30.0,
        max_message_bytes: int = 128 * 1024 * 1024,
    ) -> InferenceClient:
        transport = await open_transport(broker_url, namespace=namespace, max_message_bytes=max_message_bytes)
        client = cls(transport, model=model, timeout_s=timeout_s)
        client._owns_transport = True
        await client.start()
        return client

    async def start(self) -> None:
        self._queue = await self.transport.declare_queue(
            self._reply_key, [self._reply_key], durable=False, exclusive=True, auto_delete=True
        )
        self._tag = await self.transport.consume(self._queue, self._on_reply, prefetch=256)

    async def close(self) -> None:
        if self._tag is not None:
            await self.transport.cancel(self._tag)
            self._tag = None
        if self._queue is not None:
            await self.transport.delete_queue(self._queue)
            self._queue = None
        if self._owns_transport:
            await self.transport.close()

    async def __aenter__(self) -> InferenceClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def infer(self, inputs: np.ndarray) -> np.ndarray:
        """Return the network's outputs for `inputs` (rows x input width, the model's dtype)."""
        correlation_id = uuid.uuid4().hex
        header = BlockHeader(
            kind=MessageKind.INFERENCE, job="request", step=0, micro_batch=0, layer=0,
            source="client", destination="serve",
        )
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._replies[correlation_id] = future
        try:
            try:
                await self.transport.publish(
                    Outgoing(
                        inference_routing_key(self.model),
                        encode_block(header, np.ascontiguousarray(inputs)),
                        persistent=False,
                        reply_to=self._reply_key,
                        correlation_id=correlation_id,
                    )
                )
            except UnroutableError:
                raise InferenceError(
                    "no_server", f"no inference server is serving model {self.model!r}; start `mpnn serve {self.model}`"
                ) from None
            try:
                reply = await asyncio.wait_for(future, self.timeout_s)
            except asyncio.TimeoutError:
                raise InferenceError("timed_out", f"no reply within {self.timeout_s:.1f} s") from None
        finally:
            self._replies.pop(correlation_id, None)
        if not is_data_frame(reply.body):
            error = decode_control(reply.body, max_size_bytes=1 << 20)
            raise InferenceError(str(error.payload.get("reason")), str(error.payload.get("detail")))
        self.last_snapshot = reply.headers.get(SNAPSHOT_HEADER)
        return decode_block(reply.body, max_size_bytes=self.transport.max_body_bytes).array

    async def _on_reply(self, delivery: Delivery) -> None:
        future = self._replies.get(delivery.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(delivery)
        else:
            log.debug("reply.unmatched correlation_id=%s", delivery.correlation_id)
        await delivery.ack()
