"""Prometheus metrics of the daemons, served over HTTP with `--metrics-port`.

`MetricsExporter` puts three sources into one registry of its own:
- the transport's traffic, from a `MeteredTransport` (see `ops.metered`);
- `RuntimeCollector`, which reads the worker's `counters` dict, its state and
  the scheduler service's job count at each scrape, so those objects need no
  metrics code;
- the depth of the daemon's queues, which `QueueDepthSampler` fetches from the
  broker every few seconds in an asyncio task, because `queue_depth` is a
  broker round trip and a scrape runs in the HTTP server's thread.

With no port configured the exporter does nothing and the daemon's transport
stays unwrapped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mpnn_async.errors import ConfigError, MpnnError
from mpnn_async.ops.metered import MeteredTransport, TransportMeter
from mpnn_async.transport.base import Transport

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from mpnn_async.runtime.service import SchedulerService
    from mpnn_async.runtime.worker import Worker

__all__ = [
    "DEFAULT_METRICS_HOST",
    "DEPTH_INTERVAL_S",
    "MetricsExporter",
    "MetricsOptions",
    "QueueDepthSampler",
    "RuntimeCollector",
    "add_metrics_arguments",
]

log = logging.getLogger(__name__)

METRICS_PORT_ENV = "MPNN_METRICS_PORT"
METRICS_HOST_ENV = "MPNN_METRICS_HOST"
# Loopback by default: the endpoint has no authentication.
DEFAULT_METRICS_HOST = "127.0.0.1"
DEPTH_INTERVAL_S = 5.0

WORKER_COUNTER_HELP = {
    "received": "Messages the worker's partition handlers received: blocks and control messages",
    "dead_lettered": "Messages the worker rejected to the dead-letter queue",
    "duplicates": "Blocks dropped as duplicates of a block already accepted",
    "superseded": "Blocks dropped because they belong to an older attempt or an already applied step",
}
_INVALID_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_]")


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--metrics-port` and `--metrics-host` to a daemon's subcommand."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (env {METRICS_PORT_ENV}; default: no metrics)",
    )
    parser.add_argument(
        "--metrics-host",
        help=f"address the metrics server listens on (env {METRICS_HOST_ENV}, default {DEFAULT_METRICS_HOST}); "
        "0.0.0.0 lets other hosts scrape it, and the endpoint has no authentication",
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MetricsOptions:
    """The address of the metrics endpoint; `port` None turns metrics off."""

    port: int | None = None
    host: str = DEFAULT_METRICS_HOST

    @property
    def enabled(self) -> bool:
        return self.port is not None

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> MetricsOptions:
        """Resolve the flags, then `MPNN_METRICS_PORT` and `MPNN_METRICS_HOST`, then the defaults."""
        environ = os.environ if environ is None else environ
        port: Any = getattr(args, "metrics_port", None)
        source = "--metrics-port"
        if port is None and environ.get(METRICS_PORT_ENV, "").strip():
            port, source = environ[METRICS_PORT_ENV].strip(), METRICS_PORT_ENV
        host = getattr(args, "metrics_host", None) or environ.get(METRICS_HOST_ENV, "").strip() or DEFAULT_METRICS_HOST
        if port is None:
            return cls(host=host)
        return cls(port=_parse_port(port, source), host=host)


def _parse_port(value: Any, source: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(source, f"invalid port {value!r}", fix="give a TCP port from 1 to 65535")
    return port


class RuntimeCollector(Collector):
    """Reads the worker's counters and state and the scheduler's job count at each scrape."""

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.service: SchedulerService | None = None
        self.sampler: QueueDepthSampler | None = None

    def __repr__(self) -> str:
        return f"<RuntimeCollector worker={self.worker!r} service={self.service!r}>"

    def collect(self) -> Iterator[Metric]:
        if self.worker is not None:
            yield from _worker_metrics(self.worker)
        if self.service is not None:
            yield from _scheduler_metrics(self.service)
        if self.sampler is not None:
            depth = GaugeMetricFamily(
                "mpnn_queue_depth",
                f"Ready messages in the queue at the last sample (taken every {self.sampler.interval_s:g} s)",
                labels=["queue"],
            )
            for queue, count in sorted(self.sampler.depths().items()):
                depth.add_metric([queue], count)
            yield depth


def _worker_metrics(worker: Worker) -> Iterator[Metric]:
    # dict() copies under the GIL, so a handler changing a value mid-scrape cannot break the loop.
    for key, value in dict(worker.counters).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = "mpnn_worker_" + _INVALID_NAME_CHARACTERS.sub("_", key)
        help_text = WORKER_COUNTER_HELP.get(key, f"The worker's {key!r} counter")
        family = CounterMetricFamily(name, help_text, labels=["worker"])
        family.add_metric([worker.worker_id], value)
        yield family
    state = GaugeMetricFamily("mpnn_worker_state", "1 for the worker's current state, 0 for the others",
                              labels=["worker", "state"])
    for member in type(worker.state):
        state.add_metric([worker.worker_id, member.value], 1.0 if member is worker.state else 0.0)
    yield state


def _scheduler_metrics(service: SchedulerService) -> Iterator[Metric]:
    finished = CounterMetricFamily(
        "mpnn_scheduler_jobs_finished", "Jobs the scheduler took from the job queue and finished, completed or failed"
    )
    finished.add_metric([], service.jobs_done)
    yield finished
    running = GaugeMetricFamily("mpnn_scheduler_job_running", "1 while the scheduler runs a job")
    running.add_metric([], 0.0 if service.current is None else 1.0)
    yield running


class QueueDepthSampler:
    """Fetches the depth of some queues every `interval_s` and keeps the last values for scrapes."""

    def __init__(self, *, transport: Transport, queues: Sequence[str], interval_s: float = DEPTH_INTERVAL_S) -> None:
        self.transport = transport
        self.queues = tuple(queues)
        self.interval_s = interval_s
        self._depths: dict[str, int] = {}
        self._failing: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<QueueDepthSampler queues={list(self.queues)} depths={self._depths} failing={sorted(self._failing)}>"

    def depths(self) -> dict[str, int]:
        return dict(self._depths)

    async def sample(self) -> None:
        """Fetch every queue's depth once; a queue whose look-up fails has no value until it succeeds."""
        for queue in self.queues:
            try:
                self._depths[queue] = await self.transport.queue_depth(queue)
            except MpnnError as error:
                self._depths.pop(queue, None)
                if queue not in self._failing:
                    log.warning("metrics.depth_failed queue=%s error=%s", queue, error)
                    self._failing.add(queue)
                continue
            if queue in self._failing:
                log.info("metrics.depth_recovered queue=%s", queue)
                self._failing.discard(queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mpnn-queue-depth")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.interval_s)


class MetricsExporter:
    """Serves one daemon's metrics; with `options.enabled` False every method does nothing.

    Use: create it, build the worker or scheduler service on `exporter.transport`,
    `collect_from(...)` it, `start()` (binds the port, so a port in use fails
    before any message is consumed), `watch_queues(...)` once the queues are
    declared, and `await stop()` at the end.
    """

    def __init__(self, *, options: MetricsOptions, transport: Transport, depth_interval_s: float = DEPTH_INTERVAL_S):
        self.options = options
        self.depth_interval_s = depth_interval_s
        self.meter = TransportMeter()
        self.transport: Transport = MeteredTransport(transport, meter=self.meter) if options.enabled else transport
        self.runtime = RuntimeCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self._server: WSGIServer | None = None

    def __repr__(self) -> str:
        state = f"serving {self.url}" if self._server is not None else "stopped"
        return f"<MetricsExporter {state if self.options.enabled else 'disabled'} sampler={self.runtime.sampler!r}>"

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}/metrics"

    def collect_from(self, *, worker: Worker | None = None, service: SchedulerService | None = None) -> None:
        self.runtime.worker = worker
        self.runtime.service = service

    def start(self) -> None:
        """Register the collectors and start the HTTP server in a daemon thread."""
        if not self.options.enabled or self._server is not None:
            return
        self.registry.register(self.meter)
        self.registry.register(self.runtime)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        assert self.options.port is not None
        try:
            self._server, _thread = start_http_server(self.options.port, addr=self.options.host, registry=self.registry)
        except OSError as error:
            raise ConfigError(
                "--metrics-port",
                f"cannot listen on {self.options.host}:{self.options.port}: {error}",
                fix="choose a free port with --metrics-port or MPNN_METRICS_PORT, or an address of this host",
            ) from error
        log.info("metrics.started url=%s", self.url)

    def watch_queues(self, queues: Sequence[str]) -> None:
        """Start sampling the depth of `queues` (full names) now and every `depth_interval_s`."""
        if not self.options.enabled or self.runtime.sampler is not None:
            return
        self.runtime.sampler = QueueDepthSampler(transport=self.transport, queues=queues, interval_s=self.depth_interval_s)
        self.runtime.sampler.start()

    async def stop(self) -> None:
        if self.runtime.sampler is not None:
            await self.runtime.sampler.stop()
        if self._server is not None:
            server, self._server = self._server, None
            # shutdown() waits for serve_forever's poll loop (up to 0.5 s), so it runs off the event loop.
            await asyncio.to_thread(server.shutdown)
            server.server_close()
            log.info("metrics.stopped url=%s", self.url)
