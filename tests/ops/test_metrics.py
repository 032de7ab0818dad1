"""Prometheus metrics: the metered transport's counters, the collectors, and `--metrics-port` on a real worker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mpnn_async.errors import ConfigError
from mpnn_async.ops.metered import SENT_AT_HEADER, MeteredTransport, TransportMeter
from mpnn_async.ops.metrics import (
    MetricsExporter,
    MetricsOptions,
    QueueDepthSampler,
    RuntimeCollector,
)
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.runtime.worker import Worker
from mpnn_async.store import Store
from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Outgoing, UnroutableError
from mpnn_async.wire import BlockHeader, encode_block
from tests.ops.conftest import run_mpnn
from tests.runtime.jobs import PLANS, make_job, synthetic_dataset
from tests.runtime.processes import wait_until

METRIC_NAMES = (
    "mpnn_messages_received_total",
    "mpnn_received_bytes_total",
    "mpnn_redeliveries_total",
    "mpnn_messages_published_total",
    "mpnn_published_bytes_total",
    "mpnn_publish_failures_total",
    "mpnn_handler_seconds",
    "mpnn_step_seconds",
    "mpnn_hop_seconds",
    "mpnn_queue_depth",
    "mpnn_worker_received_total",
    "mpnn_worker_dead_lettered_total",
    "mpnn_worker_duplicates_total",
    "mpnn_worker_superseded_total",
    "mpnn_worker_state",
)


def options(*arguments: str, environ: dict[str, str] | None = None) -> MetricsOptions:
    parser = argparse.ArgumentParser()
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--metrics-host")
    return MetricsOptions.from_args(parser.parse_args(arguments), environ or {})


def test_options_precedence():
    assert options() == MetricsOptions(port=None, host="127.0.0.1")
    assert not options().enabled
    assert options(environ={"MPNN_METRICS_PORT": "9100"}).port == 9100
    assert options("--metrics-port", "9200", environ={"MPNN_METRICS_PORT": "9100"}).port == 9200
    assert options(environ={"MPNN_METRICS_PORT": "9100", "MPNN_METRICS_HOST": "0.0.0.0"}).host == "0.0.0.0"
    assert options("--metrics-host", "::1", environ={"MPNN_METRICS_HOST": "0.0.0.0"}).host == "::1"


@pytest.mark.parametrize(("arguments", "environ", "field"), [
    (("--metrics-port", "0"), {}, "--metrics-port"),
    (("--metrics-port", "70000"), {}, "--metrics-port"),
    ((), {"MPNN_METRICS_PORT": "http"}, "MPNN_METRICS_PORT"),
])
def test_options_reject_bad_port(arguments, environ, field):
    with pytest.raises(ConfigError, match=field):
        options(*arguments, environ=environ)


def sample_sum(registry: CollectorRegistry, name: str, *, queue_prefix: str = "") -> float:
    """Sum a sample over every label set whose `queue` label starts with `queue_prefix`."""
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name and sample.labels.get("queue", "").startswith(queue_prefix):
                total += sample.value
    return total


async def test_counters_after_in_process_job(tmp_path, namespace):
    job = make_job("metered", PLANS["mixed"], max_steps=3)
    plan = job.build_plan()
    meter = TransportMeter()
    transport = MeteredTransport(await open_transport(None, namespace=namespace, max_message_bytes=1 << 20), meter=meter)
    store = Store.open(tmp_path, create=True)
    worker = Worker(transport=transport, store=store, partitions=plan.partitions, worker_id="metered")
    runtime = RuntimeCollector()
    runtime.worker = worker
    registry = CollectorRegistry()
    registry.register(meter)
    registry.register(runtime)
    await worker.start()
    try:
        result = await JobRunner(job=job, transport=transport, store=store, dataset=synthetic_dataset()).run()
    finally:
        await worker.stop(timeout_s=5)
        await transport.close()

    # Training blocks and control arrive on the worker's own queues `w.<worker>.<partition>`.
    partition_queues = f"{namespace}.w.metered."
    received = sample_sum(registry, "mpnn_messages_received_total")
    assert worker.counters["received"] > 0
    assert sample_sum(registry, "mpnn_messages_received_total", queue_prefix=partition_queues) == worker.counters["received"]
    assert registry.get_sample_value("mpnn_worker_received_total", {"worker": "metered"}) == worker.counters["received"]
    assert registry.get_sample_value("mpnn_worker_state", {"worker": "metered", "state": "stopped"}) == 1
    # Every sender is metered, so every delivery has a hop time and a handler time.
    assert sample_sum(registry, "mpnn_hop_seconds_count") == received
    assert sample_sum(registry, "mpnn_handler_seconds_count") == received
    assert sample_sum(registry, "mpnn_step_seconds_count", queue_prefix=partition_queues) == result.steps * len(plan.partitions)
    assert sample_sum(registry, "mpnn_messages_published_total") >= received
    assert sample_sum(registry, "mpnn_published_bytes_total") >= sample_sum(registry, "mpnn_received_bytes_total") > 0
    assert sample_sum(registry, "mpnn_redeliveries_total") == 0
    assert sample_sum(registry, "mpnn_publish_failures_total") == 0


async def test_publish_failure_counted(namespace):
    meter = TransportMeter()
    registry = CollectorRegistry()
    registry.register(meter)
    transport = MeteredTransport(await open_transport(None, namespace=namespace, max_message_bytes=1 << 20), meter=meter)
    try:
        with pytest.raises(UnroutableError):
            await transport.publish(Outgoing("nobody.listens", b"x"))
    finally:
        await transport.close()

    assert registry.get_sample_value("mpnn_publish_failures_total") == 1
    assert registry.get_sample_value("mpnn_messages_published_total") == 0
    assert "published=0" in repr(meter)


async def test_sent_at_header_added(namespace):
    transport = MeteredTransport(await open_transport(None, namespace=namespace, max_message_bytes=1 << 20))
    headers: list[dict[str, object]] = []

    async def keep(delivery):
        headers.append(dict(delivery.headers))
        await delivery.ack()

    try:
        queue = await transport.declare_queue("stamped", ["stamped"])
        await transport.consume(queue, keep, prefetch=1)
        await transport.publish(Outgoing("stamped", b"x", headers={"other": 1}))
        await asyncio.wait_for(_until(lambda: headers), 5)
    finally:
        await transport.purge_namespace()
        await transport.close()

    assert headers[0]["other"] == 1
    assert isinstance(headers[0][SENT_AT_HEADER], float)


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def test_depth_sampler_caches_and_drops(namespace, caplog):
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    try:
        queue = await transport.declare_queue("deep", ["deep"])
        await transport.publish_many(Outgoing("deep", b"m") for _ in range(3))
        sampler = QueueDepthSampler(transport=transport, queues=[queue], interval_s=60)
        await sampler.sample()
        first = sampler.depths()
        await transport.delete_queue(queue)
        with caplog.at_level(logging.WARNING, logger="mpnn_async.ops.metrics"):
            await sampler.sample()
            await sampler.sample()
    finally:
        await transport.close()

    assert first == {queue: 3}
    assert sampler.depths() == {}
    warnings = [record for record in caplog.records if "metrics.depth_failed" in record.getMessage()]
    assert len(warnings) == 1


async def test_exporter_rejects_port_in_use(namespace):
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exporter = MetricsExporter(options=MetricsOptions(port=port), transport=transport)
        try:
            with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
                exporter.start()
        finally:
            await exporter.stop()
            await transport.close()


async def test_disabled_exporter_leaves_transport(namespace):
    transport = await open_transport(None, namespace=namespace, max_message_bytes=1 << 20)
    exporter = MetricsExporter(options=MetricsOptions(), transport=transport)
    exporter.start()
    exporter.watch_queues(["anything"])
    await exporter.stop()
    await transport.close()

    assert exporter.transport is transport
    assert "disabled" in repr(exporter)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample_value(text: str, line_prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.rabbitmq
async def test_worker_metrics_endpoint(daemons, broker, port):
    daemons.worker("a", "--metrics-port", str(port))
    queue = broker.queue_name("part.a")
    depth_line = f'mpnn_queue_depth{{queue="{queue}"}}'
    text = await asyncio.to_thread(
        wait_until, lambda: _scrape_quietly(port, depth_line), timeout_s=30, what="the metrics endpoint",
        details=lambda: daemons.log("worker-a"),
    )
    for name in METRIC_NAMES:
        assert name in text, name

    # A block of a job the worker never started: dead-lettered, and counted on both sides.
    ghost = BlockHeader(kind="activation", job="ghost", step=0, micro_batch=0, layer=0, source="scheduler",
                        destination="a")
    body = encode_block(ghost, np.zeros((2, 3)))
    metered = MeteredTransport(broker)
    await metered.publish(Outgoing("ghost.part.a", body))
    received_line = f'mpnn_messages_received_total{{queue="{queue}"}}'
    text = await asyncio.to_thread(
        wait_until, lambda: _scrape_quietly(port, received_line), timeout_s=30, what="the block to be counted",
        details=lambda: daemons.log("worker-a"),
    )

    assert sample_value(text, received_line) == 1
    assert sample_value(text, f'mpnn_received_bytes_total{{queue="{queue}"}}') == len(body)
    assert sample_value(text, f'mpnn_hop_seconds_count{{queue="{queue}"}}') == 1
    assert sample_value(text, "mpnn_worker_received_total{") == 1
    assert sample_value(text, "mpnn_worker_dead_lettered_total{") == 1
    assert sample_value(text, 'mpnn_worker_state{state="running"') == 1


def _scrape_quietly(port: int, required: str) -> str | None:
    try:
        text = scrape(port)
    except OSError:
        return None
    return text if required in text else None


@pytest.mark.rabbitmq
def test_worker_port_in_use_exits_3(broker_url, namespace, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = run_mpnn(
            "worker", "--partition", "a", "--metrics-port", str(port),
            env={"MPNN_BROKER_URL": broker_url, "MPNN_NAMESPACE": namespace, "MPNN_STORE": str(tmp_path)},
        )

    assert completed.returncode == 3, completed.stderr
    assert "--metrics-port" in completed.stderr
