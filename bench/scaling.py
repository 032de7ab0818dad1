"""Throughput and traffic as one network is split over 1, 2 and 4 worker processes.

The network is 784-4096-4096-10 float32 (relu, relu, softmax cross-entropy,
Adam), trained on batches of 512 rows in 4 micro-batches of 128, all in
flight. Every layer is split evenly into N partitions, one `mpnn worker`
process each, over RabbitMQ, with the scheduler (`JobRunner`) in this
process. A neuron split makes every owner of a layer gather the whole
previous layer: each owner sends its slice to the other owners of the next
layer (an all-gather), so messages grow with N squared and bytes with N - 1.

For each N, one run with each worker's BLAS pool at the library default
(`MPNN_BLAS_THREADS=0`: one thread per core), one at cores / N threads and
one at 1 thread, side by side (the same setting counts once).

Messages and bytes are counted where they are delivered. For each worker,
these are `mpnn_messages_received_total` and `mpnn_received_bytes_total` on
its queues (shared and own), scraped from `--metrics-port`. For the
scheduler, its own `MeteredTransport` counts its reply queue. Heartbeats
are left out. The minimum is `boundary_traffic()` of the plan: the array
bytes and block messages that must cross each partition boundary.

Usage:

    python bench/scaling.py [--workers 1,2,4] [--steps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import WorkerPool, job_document, record_step_windows, synthetic_dataset
from machine import machine_line

from mpnn_async.ops.metered import MeteredTransport
from mpnn_async.planning.cost import boundary_traffic
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.progress import ProgressEvent
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.store import Store
from mpnn_async.transport import open_transport

WIDTHS = (784, 4096, 4096, 10)
BATCH_ROWS = 512
MICRO_BATCH_ROWS = 128
WARM_UP_STEPS = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def delivered(text: str) -> tuple[float, float]:
    """Return (messages, body bytes) delivered to the queues in a Prometheus text page, without heartbeats."""
    messages = size = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if ".beats." in sample.labels.get("queue", ""):
                continue
            if sample.name == "mpnn_messages_received_total":
                messages += sample.value
            elif sample.name == "mpnn_received_bytes_total":
                size += sample.value
    return messages, size


def thread_variants(cores: int, workers: int) -> list[int]:
    """Return the BLAS threads per worker to compare: 0 (the library default, one per core), cores / N, and 1."""
    return [0, *sorted({max(1, cores // workers), 1} - {cores})]


def plan_minimum(plan: Any) -> tuple[int, int]:
    """Return (block messages, array bytes) per step that the plan makes cross partition boundaries."""
    micro_batches = BATCH_ROWS // MICRO_BATCH_ROWS
    boundaries = boundary_traffic(plan)
    messages = sum(b.forward_messages + b.backward_messages for b in boundaries) * micro_batches
    size = sum((b.forward_bytes_per_row + b.backward_bytes_per_row) * BATCH_ROWS for b in boundaries)
    return messages, size


async def run(workers: int, blas_threads: int, steps: int, broker: str, workdir: Path) -> dict[str, Any]:
    partitions = [f"p{index}" for index in range(workers)]
    label = f"n{workers}-blas{blas_threads}"
    total_steps = WARM_UP_STEPS + steps + 1
    document = job_document(
        f"scaling-{label}", WIDTHS, {"partitions": partitions, "default": {"strategy": "even"}},
        batch_rows=BATCH_ROWS, micro_batch_rows=MICRO_BATCH_ROWS, in_flight=4, steps=total_steps,
    )
    job = JobSpec.from_dict(document)
    env = dict(os.environ, MPNN_BROKER_URL=broker, MPNN_NAMESPACE=f"bench-{uuid.uuid4().hex[:8]}",
               MPNN_STORE=str(workdir / "store"), MPNN_BLAS_THREADS=str(blas_threads))
    ports = {partition: free_port() for partition in partitions}
    store = Store.open(workdir / "store", create=True)
    transport = MeteredTransport(await open_transport(broker, namespace=env["MPNN_NAMESPACE"], max_message_bytes=128 << 20))
    registry = CollectorRegistry()
    registry.register(transport.meter)
    marks: dict[int, tuple[float, float]] = {}

    def count() -> tuple[float, float]:
        pages = [generate_latest(registry).decode()]
        for port in ports.values():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                pages.append(response.read().decode())
        totals = [delivered(page) for page in pages]
        return sum(m for m, _ in totals), sum(b for _, b in totals)

    def on_progress(event: ProgressEvent) -> None:
        if event.accuracy is None and event.state == "running" and event.step in (WARM_UP_STEPS, WARM_UP_STEPS + steps):
            marks[event.step] = count()

    arguments = {partition: ["--metrics-port", str(port)] for partition, port in ports.items()}
    pool = WorkerPool(partitions, env, workdir, label=label, arguments=arguments)
    try:
        with pool:
            dataset = synthetic_dataset(BATCH_ROWS * total_steps, WIDTHS[0], WIDTHS[-1])
            runner = JobRunner(job=job, transport=transport, store=store, dataset=dataset, on_progress=on_progress)
            windows = record_step_windows(runner)
            await runner.run()
    finally:
        for queue in pool.queues():
            await transport.delete_queue(transport.queue_name(queue))
        await transport.purge_namespace()
        await transport.close()
        shutil.rmtree(workdir / "store", ignore_errors=True)
    (first_messages, first_bytes), (last_messages, last_bytes) = marks[WARM_UP_STEPS], marks[WARM_UP_STEPS + steps]
    step_s = float(np.median([end - start for start, end in windows[WARM_UP_STEPS:-1]]))
    return {
        "step_s": step_s,
        "messages": (last_messages - first_messages) / steps,
        "bytes": (last_bytes - first_bytes) / steps,
        "minimum": plan_minimum(job.build_plan()),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("MPNN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker process counts N")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run, after 2 warm-up steps")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0))
    workdir = Path(tempfile.mkdtemp(prefix="mpnn-bench-scaling-"))
    print(machine_line())
    print(f"model: {'-'.join(map(str, WIDTHS))} float32, adam, every layer split evenly over N partitions, "
          f"one worker process each; batch {BATCH_ROWS}, micro-batch {MICRO_BATCH_ROWS}, in flight 4; "
          f"{args.steps} timed steps after {WARM_UP_STEPS} warm-up; logs {workdir}")
    print("vs N=1: throughput against one worker with the same BLAS threads (the library default where N=1 has no such run)")
    print("  N  BLAS threads  step ms  samples/s  vs N=1   msgs/step  minimum  ratio     MB/step  minimum  ratio")
    # Throughput of one worker, by BLAS threads, so each row compares with N=1 at the same setting.
    single: dict[int, float] = {}
    for workers in map(int, args.workers.split(",")):
        for blas_threads in thread_variants(cores, workers):
            result = await run(workers, blas_threads, args.steps, args.broker, workdir)
            samples_per_s = BATCH_ROWS / result["step_s"]
            if workers == 1:
                single[blas_threads] = samples_per_s
            baseline = single.get(blas_threads) or single.get(0) or samples_per_s
            min_messages, min_bytes = result["minimum"]
            print(
                f"{workers:>3}  {blas_threads or f'library {cores}':>12} {result['step_s'] * 1000:8.0f} "
                f"{samples_per_s:10.0f} {samples_per_s / baseline:6.2f}x  {result['messages']:9.1f} {min_messages:8d} "
                f"{result['messages'] / min_messages:6.2f}  {result['bytes'] / 1e6:10.2f} {min_bytes / 1e6:8.2f} "
                f"{result['bytes'] / min_bytes:6.3f}"
            )
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    asyncio.run(main())
