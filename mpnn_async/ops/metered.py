"""A transport wrapper that counts what passes through it, for the Prometheus metrics.

`MeteredTransport` delegates every operation to the transport it wraps. It
records in a `TransportMeter` the messages and bytes received per queue, the
redeliveries, the messages and bytes published and the failed publishes. It
also times each handler call, each `step.apply` and each delivery's hop. The runtime needs no change to be measured: a daemon wraps its
transport before it hands it to the worker or the scheduler.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mpnn_async.runtime.protocol import ControlType
from mpnn_async.transport.base import Delivery, Handler, Outgoing, Transport
from mpnn_async.wire import is_data_frame

__all__ = ["LATENCY_BUCKETS_S", "SENT_AT_HEADER", "MeteredTransport", "TransportMeter"]

log = logging.getLogger(__name__)

# Header with the sender's wall-clock time at publish, in seconds since the epoch.
SENT_AT_HEADER = "x-mpnn-sent-at"

# From 0.5 ms (a hop on one host) to 60 s (a step that persists large weights to NFS).
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

# Control messages are small JSON objects; a larger body is not parsed for its type.
_MAX_CONTROL_PEEK_BYTES = 64 * 1024


class TransportMeter(Collector):
    """The metrics of one process's transport, kept outside any global registry."""

    def __init__(self) -> None:
        self.messages_received = Counter(
            "mpnn_messages_received", "Messages delivered to this process's handlers", ["queue"], registry=None
        )
        self.received_bytes = Counter(
            "mpnn_received_bytes", "Body bytes of the messages delivered to this process", ["queue"], registry=None
        )
        self.redeliveries = Counter(
            "mpnn_redeliveries",
            "Deliveries the broker marked redelivered: requeued, or returned after a consumer or connection was lost",
            ["queue"],
            registry=None,
        )
        self.messages_published = Counter(
            "mpnn_messages_published", "Messages this process published and the broker confirmed", registry=None
        )
        self.published_bytes = Counter(
            "mpnn_published_bytes", "Body bytes of the messages this process published", registry=None
        )
        self.publish_failures = Counter(
            "mpnn_publish_failures", "Publishes that raised: unroutable, rejected or not confirmed", registry=None
        )
        self.handler_seconds = Histogram(
            "mpnn_handler_seconds",
            "Time from a handler call's start to its return; a block that completes a gather includes its computation",
            ["queue"],
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.step_seconds = Histogram(
            "mpnn_step_seconds",
            "Time to handle one step.apply: the optimizer update and, when persisted, the store commit",
            ["queue"],
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.hop_seconds = Histogram(
            "mpnn_hop_seconds",
            "Time from the sender's publish to the start of this process's handler, by the two wall clocks",
            ["queue"],
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )

    def __repr__(self) -> str:
        published = _total(self.messages_published)
        received = _total(self.messages_received)
        return f"<TransportMeter received={received:.0f} published={published:.0f}>"

    def collect(self) -> Iterator[Metric]:
        for metric in (
            self.messages_received,
            self.received_bytes,
            self.redeliveries,
            self.messages_published,
            self.published_bytes,
            self.publish_failures,
            self.handler_seconds,
            self.step_seconds,
            self.hop_seconds,
        ):
            yield from metric.collect()


class MeteredTransport(Transport):
    """Delegates to `inner` and records its traffic in `meter`; see the module docstring.

    Every published message gets the header `x-mpnn-sent-at`, so the hop
    latency is measured only for messages whose sender is metered too.
    """

    def __init__(self, inner: Transport, *, meter: TransportMeter | None = None) -> None:
        self.inner = inner
        self.meter = meter or TransportMeter()
        self.namespace = inner.namespace
        self.max_message_bytes = inner.max_message_bytes

    def __repr__(self) -> str:
        return f"<MeteredTransport {self.inner!r}>"

    def __getattr__(self, name: str) -> Any:
        # Attributes of the wrapped transport outside the interface (redacted_url, broker).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def is_open(self) -> bool:
        return self.inner.is_open

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def declare_queue(
        self,
        local_name: str,
        routing_keys: Iterable[str],
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        expires_s: float | None = None,
    ) -> str:
        return await self.inner.declare_queue(
            local_name,
            routing_keys,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            expires_s=expires_s,
        )

    async def delete_queue(self, full_name: str) -> None:
        await self.inner.delete_queue(full_name)

    async def publish(self, message: Outgoing) -> None:
        stamped = dataclasses.replace(message, headers={**message.headers, SENT_AT_HEADER: time.time()})
        try:
            await self.inner.publish(stamped)
        except Exception:
            self.meter.publish_failures.inc()
            raise
        self.meter.messages_published.inc()
        self.meter.published_bytes.inc(len(message.body))

    # publish_many is the base class's: concurrent calls of self.publish, each counted.

    async def consume(self, full_name: str, handler: Handler, *, prefetch: int) -> str:
        return await self.inner.consume(full_name, self._metered(full_name, handler), prefetch=prefetch)

    async def cancel(self, consumer_tag: str) -> None:
        await self.inner.cancel(consumer_tag)

    async def queue_depth(self, full_name: str) -> int:
        return await self.inner.queue_depth(full_name)

    async def purge_namespace(self) -> None:
        await self.inner.purge_namespace()

    def _metered(self, queue: str, handler: Handler) -> Handler:
        meter = self.meter

        async def handle(delivery: Delivery) -> None:
            received_at_s = time.time()
            started = time.perf_counter()
            meter.messages_received.labels(queue).inc()
            meter.received_bytes.labels(queue).inc(len(delivery.body))
            if delivery.redelivered:
                meter.redeliveries.labels(queue).inc()
            sent_at_s = _sent_at(delivery)
            if sent_at_s is not None:
                # NOTE: across hosts this includes the difference of their clocks; a
                # negative difference is recorded as 0.
                meter.hop_seconds.labels(queue).observe(max(0.0, received_at_s - sent_at_s))
            is_step = _is_step_apply(delivery.body)
            try:
                await handler(delivery)
            finally:
                elapsed_s = time.perf_counter() - started
                meter.handler_seconds.labels(queue).observe(elapsed_s)
                if is_step:
                    meter.step_seconds.labels(queue).observe(elapsed_s)

        return handle


def _total(counter: Counter) -> float:
    return sum(
        sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total")
    )


def _sent_at(delivery: Delivery) -> float | None:
    value = delivery.headers.get(SENT_AT_HEADER) if delivery.headers else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _is_step_apply(body: bytes) -> bool:
    """Return True for a `step.apply` control message; never raises on a malformed body."""
    if len(body) > _MAX_CONTROL_PEEK_BYTES or not body.startswith(b"{") or is_data_frame(body):
        return False
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and payload.get("type") == ControlType.STEP_APPLY.value
