"""Inference latency and throughput of `mpnn serve` against a single-process forward pass.

One run starts, on this machine: one `mpnn worker` process per partition of
the digits model (configs/digits.toml, freshly initialised weights), one
`mpnn serve` process, and measures from this process, over RabbitMQ:

- latency percentiles (p50, p99) of sequential requests of 1 and of 64 rows;
- throughput (rows/s) with 32 concurrent requests of 1 and of 64 rows;

next to the same forward pass computed by `ReferenceTrainer.predict` in this
process, and prints the ratios. Usage:

    python bench/serve_latency.py [--broker URL] [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpnn_async.client import InferenceClient  # noqa: E402
from mpnn_async.model.optim import OptimizerSpec  # noqa: E402
from mpnn_async.model.reference import ReferenceTrainer  # noqa: E402
from mpnn_async.planning import load_plan  # noqa: E402
from mpnn_async.runtime import snapshots, weights  # noqa: E402
from mpnn_async.store import ModelStore, Store  # noqa: E402
from mpnn_async.transport import open_transport  # noqa: E402


def percentile_ms(samples_s: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples_s) * 1000, q))


def time_local(predict, inputs: np.ndarray, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        predict(inputs)
        samples.append(time.perf_counter() - started)
    return samples


async def time_remote(client: InferenceClient, inputs: np.ndarray, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await client.infer(inputs)
        samples.append(time.perf_counter() - started)
    return samples


async def throughput_remote(client: InferenceClient, inputs: np.ndarray, count: int, concurrency: int) -> float:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            await client.infer(inputs)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count * inputs.shape[0] / (time.perf_counter() - started)


def wait_for_line(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {text!r} in {path}:\n{path.read_text(errors='replace') if path.exists() else ''}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("MPNN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()

    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="mpnn-bench-"))
    store = Store.open(workdir / "store", create=True)
    plan = load_plan(ROOT / "configs" / "digits.toml")
    model_store = ModelStore(store, "bench")
    weights.prepare_partitions(model_store, plan)
    snapshots.create_snapshot(model_store, "v1")
    parameters = weights.load_parameters(model_store, plan)
    reference = ReferenceTrainer(plan.spec, OptimizerSpec(), parameters=parameters)

    env = dict(os.environ, MPNN_BROKER_URL=args.broker, MPNN_NAMESPACE=namespace, MPNN_STORE=str(workdir / "store"))
    processes = []
    for name, command in [(f"worker-{p}", ["worker", "--partition", p]) for p in plan.partitions] + [
        ("serve", ["serve", "bench", "--snapshot", "v1"])
    ]:
        log = open(workdir / f"{name}.log", "wb")
        processes.append(subprocess.Popen([sys.executable, "-m", "mpnn_async", "-v", *command], env=env, stdout=log, stderr=subprocess.STDOUT))
    transport = await open_transport(args.broker, namespace=namespace, max_message_bytes=128 << 20)
    try:
        wait_for_line(workdir / "serve.log", "serve.started", 60)
        client = InferenceClient(transport, model="bench", timeout_s=60)
        await client.start()
        rng = np.random.default_rng(0)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"model: digits 64-128-64-10 float32, plan {plan.plan_id} ({len(plan.partitions)} partitions), broker {namespace}")
        print(f"{'rows':>5} {'local p50 ms':>13} {'local p99 ms':>13} {'served p50 ms':>14} {'served p99 ms':>14} "
              f"{'p50 ratio':>10} {'local rows/s':>13} {'served rows/s':>14} {'ratio':>7}")
        for rows in (1, 64):
            inputs = rng.standard_normal((rows, 64)).astype(np.float32)
            await time_remote(client, inputs, 20)  # warm-up
            local = time_local(reference.predict, inputs, args.requests)
            remote = await time_remote(client, inputs, args.requests)
            local_rate = rows / float(np.mean(local))
            remote_rate = await throughput_remote(client, inputs, args.requests, 32)
            print(f"{rows:>5} {percentile_ms(local, 50):>13.3f} {percentile_ms(local, 99):>13.3f} "
                  f"{percentile_ms(remote, 50):>14.3f} {percentile_ms(remote, 99):>14.3f} "
                  f"{percentile_ms(remote, 50) / percentile_ms(local, 50):>10.0f} "
                  f"{local_rate:>13.0f} {remote_rate:>14.0f} {remote_rate / local_rate:>7.3f}")
        await client.close()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
        for queue in [f"part.{p}" for p in plan.partitions] + ["infer.bench"]:
            await transport.delete_queue(transport.queue_name(queue))
        await transport.purge_namespace()
        await transport.close()


if __name__ == "__main__":
    asyncio.run(main())
