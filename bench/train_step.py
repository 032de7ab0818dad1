"""Distributed train step time, bytes on the wire and worker memory against one NumPy process.

One run measures, on this machine, a 784-4096-4096-10 float32 network
(relu, relu, softmax cross-entropy, Adam) with batches of 512 rows in
micro-batches of 128 rows, 4 in flight:

- the step time of `ReferenceTrainer.train_step` in this process, with the
  same micro-batches;
- the step time of the same job run by `JobRunner` in this process over
  RabbitMQ, with two `mpnn worker` processes (partitions a and b), for two
  plans: `layers` (a owns layer 1, b owns layers 2 and 3) and `even` (every
  layer split evenly between a and b);
- the bytes and messages of each distributed step, against the minimum
  that the plan implies (`Plan.boundary_traffic()`, array payloads only).
  The scheduler's messages are counted by wrapping its transport, and the
  blocks that workers send each other are computed from the plan;
- how long each partition is busy per step (its forward and backward
  products and its optimizer update, timed in this process with the
  worker's BLAS thread count), so the idle
  fraction can be set against the GPipe bubble (K-1)/(M+K-1);
- the peak RSS (VmHWM) of each worker process against its weights,
  gradient accumulators, Adam state and saved activations from the plan.

Steps 1-2 are warm-up; the next `--steps` steps are timed from the
scheduler's progress events; the job's last step (which always persists the
weights to the store) is not timed. `persist_every_steps` is larger than the
job, so no other step writes weights: persistence is not what is measured.
Usage:

    python bench/train_step.py [--broker URL] [--steps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import listening_pid, machine_line, read_proc_status_kib

from mpnn_async.data import Dataset
from mpnn_async.data.batching import epoch_batches, split_micro_batches
from mpnn_async.model import kernels
from mpnn_async.model.optim import apply_update
from mpnn_async.model.reference import ReferenceTrainer
from mpnn_async.ops.blas import DEFAULT_BLAS_THREADS
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.progress import ProgressEvent
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.store import Store
from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Delivery, Outgoing
from mpnn_async.wire import BlockHeader, MessageKind, encode_block, is_data_frame

WIDTHS = (784, 4096, 4096, 10)
BATCH_ROWS = 512
MICRO_BATCH_ROWS = 128
IN_FLIGHT = 4
WARM_UP_STEPS = 2

PLANS: dict[str, dict[str, Any]] = {
    "layers": {
        "partitions": ["a", "b"],
        "layers": [
            {"layers": [1], "strategy": "whole", "partition": "a"},
            {"layers": [2, 3], "strategy": "whole", "partition": "b"},
        ],
    },
    "even": {"partitions": ["a", "b"], "default": {"strategy": "even"}},
}
TARGETS = {"layers": 1.25, "even": 1.6}


def job_document(name: str, plan: dict[str, Any], steps: int) -> dict[str, Any]:
    activations = ["relu", "relu", "identity"]
    return {
        "job": {
            "name": name,
            "batch_rows": BATCH_ROWS,
            "micro_batch_rows": MICRO_BATCH_ROWS,
            "in_flight": IN_FLIGHT,
            "max_steps": steps,
            "persist_every_steps": 1_000_000,
        },
        "model": {
            "input": WIDTHS[0],
            "dtype": "float32",
            "loss": "softmax_cross_entropy",
            "seed": 0,
            "layers": [{"width": w, "activation": a} for w, a in zip(WIDTHS[1:], activations)],
        },
        "plan": plan,
        "optimizer": {"kind": "adam", "learning_rate": 0.001},
        # Not loaded: the runner gets the synthetic dataset below.
        "dataset": {"name": "mnist-5k"},
    }


def synthetic_dataset(steps: int) -> Dataset:
    rng = np.random.default_rng(0)
    rows = BATCH_ROWS * steps
    return Dataset(
        name="synthetic",
        x_train=rng.standard_normal((rows, WIDTHS[0]), dtype=np.float32),
        y_train=rng.integers(0, WIDTHS[-1], rows, dtype=np.int64),
        x_test=rng.standard_normal((64, WIDTHS[0]), dtype=np.float32),
        y_test=rng.integers(0, WIDTHS[-1], 64, dtype=np.int64),
        classes=WIDTHS[-1],
        features=WIDTHS[0],
    )


class CountingTransport:
    """Wraps a transport and counts the messages and body bytes the scheduler sends and receives."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.counts: dict[str, list[int]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _count(self, direction: str, body: bytes, routing_key: str) -> None:
        if is_data_frame(body):
            kind = "block"
        elif routing_key == "heartbeats":
            kind = "heartbeat"
        elif routing_key.endswith(".progress"):
            kind = "progress"
        else:
            kind = "control"
        entry = self.counts.setdefault(f"{direction} {kind}", [0, 0])
        entry[0] += 1
        entry[1] += len(body)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return {key: (value[0], value[1]) for key, value in self.counts.items()}

    async def publish(self, message: Outgoing) -> None:
        self._count("sent", message.body, message.routing_key)
        await self.inner.publish(message)

    async def publish_many(self, messages: Any) -> None:
        results = await asyncio.gather(*(self.publish(m) for m in messages), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def consume(self, full_name: str, handler: Any, *, prefetch: int) -> str:
        async def counted(delivery: Delivery) -> None:
            self._count("received", delivery.body, delivery.routing_key)
            await handler(delivery)

        return await self.inner.consume(full_name, counted, prefetch=prefetch)


def broker_pid(url: str) -> int | None:
    """Return the pid of the broker at `url` when it runs on this machine, to read its CPU time; else None."""
    return listening_pid(urlparse(url).port or 5672)


def wait_for_line(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {text!r} in {path}")


def start_py_spy(py_spy: str, pid: int, output: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [py_spy, "record", "--nonblocking", "--rate", "200", "--format", "raw", "-o", str(output), "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def summarize_py_spy(path: Path, top: int = 10) -> list[str]:
    """Return the `top` innermost frames by share of the samples in a py-spy raw (collapsed) file."""
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frame = stack.split(";")[-1]
        leaves[frame] = leaves.get(frame, 0) + int(count)
        total += int(count)
    ranked = sorted(leaves.items(), key=lambda item: -item[1])[:top]
    return [f"      {count / total:6.1%}  {frame}" for frame, count in ranked]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reference_step_times(job: JobSpec, dataset: Dataset, steps: int) -> tuple[list[float], float]:
    """Return the wall time of each timed step and the mean CPU seconds per step of this process."""
    trainer = ReferenceTrainer(job.model, job.optimizer)
    batches = epoch_batches(dataset.x_train.shape[0], BATCH_ROWS, seed=0, epoch=0)
    parts = split_micro_batches(BATCH_ROWS, MICRO_BATCH_ROWS)
    times = []
    cpu_started = 0.0
    for index, indices in enumerate(batches[: WARM_UP_STEPS + steps]):
        if index == WARM_UP_STEPS:
            cpu_started = time.process_time()
        started = time.perf_counter()
        trainer.train_step(dataset.x_train[indices], dataset.y_train[indices], parts)
        times.append(time.perf_counter() - started)
    return times[WARM_UP_STEPS:], (time.process_time() - cpu_started) / steps


def partition_busy_s(plan: Any, partition: str, optimizer: Any, repeats: int = 3) -> tuple[float, float]:
    """Time one partition's work for one step here: (forward+backward of M micro-batches, Adam update)."""
    rng = np.random.default_rng(1)
    layers = plan.layers_of(partition)
    params = {
        layer: (
            rng.standard_normal((len(plan.neurons(partition, layer)), plan.spec.width(layer - 1)), dtype=np.float32),
            np.zeros(len(plan.neurons(partition, layer)), dtype=np.float32),
        )
        for layer in layers
    }
    micro_batches = BATCH_ROWS // MICRO_BATCH_ROWS
    best_compute = best_update = float("inf")
    state: dict[str, dict[str, np.ndarray]] = {}
    for _ in range(repeats):
        started = time.perf_counter()
        grads = {}
        for _ in range(micro_batches):
            for layer in layers:
                weights, biases = params[layer]
                inputs = rng.standard_normal((MICRO_BATCH_ROWS, weights.shape[1]), dtype=np.float32)
                activation = plan.spec.activation(layer)
                z, a = kernels.forward(weights, biases, inputs, activation)
                delta = kernels.delta_from_output_gradient(np.ones_like(a), z, activation)
                grads[layer] = kernels.backward(weights, delta, inputs, need_input_gradient=layer > 1)
        middle = time.perf_counter()
        for layer in layers:
            weights, biases = params[layer]
            apply_update(optimizer, weights, grads[layer][0], state.setdefault(f"W{layer}", {}), 1)
            apply_update(optimizer, biases, grads[layer][1], state.setdefault(f"b{layer}", {}), 1)
        best_compute = min(best_compute, middle - started)
        best_update = min(best_update, time.perf_counter() - middle)
    return best_compute, best_update


def block_header_bytes(plan: Any, job: str) -> int:
    """Bytes a block frame adds to its array: magic, header length and the JSON header."""
    header = BlockHeader(
        kind=MessageKind.ACTIVATION, job=job, step=12, micro_batch=3, layer=1,
        source="a", destination="b", attempt=0,
    )
    array = np.zeros((MICRO_BATCH_ROWS, 2048), dtype=np.float32)
    return len(encode_block(header, array)) - array.nbytes


def time_phases(runner: JobRunner) -> dict[str, list[float]]:
    """Time the scheduler's sequential phases of each step by wrapping the runner's methods.

    `step` is the whole `_run_step`, `apply` its `JobChannel.apply_step` (from
    publishing `step.apply` to every `step.done`), and `progress` the per-step
    progress record (a store write with fsync) and event. The lists hold one
    entry per step, in order.
    """
    phases: dict[str, list[float]] = {"step": [], "apply": [], "progress": []}
    run_step, publish_progress, apply_step = runner._run_step, runner._publish_progress, runner.channel.apply_step

    async def timed_run_step(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = await run_step(*args, **kwargs)
        phases["step"].append(time.perf_counter() - started)
        return result

    async def timed_publish_progress(event: ProgressEvent) -> None:
        started = time.perf_counter()
        await publish_progress(event)
        if event.accuracy is None and event.state == "running":
            phases["progress"].append(time.perf_counter() - started)

    async def timed_apply_step(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = await apply_step(*args, **kwargs)
        phases["apply"].append(time.perf_counter() - started)
        return result

    runner._run_step = timed_run_step  # type: ignore[method-assign]
    runner._publish_progress = timed_publish_progress  # type: ignore[method-assign]
    runner.channel.apply_step = timed_apply_step  # type: ignore[method-assign]
    return phases


def start_workers(
    workdir: Path, env: dict[str, str], label: str, blas_threads: dict[str, str]
) -> list[subprocess.Popen[bytes]]:
    processes = []
    for partition in ("a", "b"):
        command = [
            sys.executable, "-m", "mpnn_async", "-v", "worker", "--partition", partition,
            "--worker-id", f"{label}-{partition}",
        ]
        if partition in blas_threads:
            command += ["--blas-threads", blas_threads[partition]]
        # The child keeps its own copy of the log's file descriptor.
        with open(workdir / f"worker-{label}-{partition}.log", "wb") as log:
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run_distributed(
    label: str, steps: int, transport: Any, store: Store, dataset: Dataset, workdir: Path, env: dict[str, str],
    py_spy: str | None, blas_threads: dict[str, str],
) -> dict[str, Any]:
    total_steps = WARM_UP_STEPS + steps + 1
    job = JobSpec.from_dict(job_document(f"bench-{label}", PLANS[label], total_steps))
    counting = CountingTransport(transport)
    marks: dict[int, tuple[float, dict[str, tuple[int, int]], dict[int, float]]] = {}
    processes = start_workers(workdir, env, label, blas_threads)
    for partition in ("a", "b"):
        wait_for_line(workdir / f"worker-{label}-{partition}.log", "worker.started", 60)
    idle_kib = {name: read_proc_status_kib(p.pid, "VmRSS") for name, p in zip("ab", processes)}
    pids = [process.pid for process in processes]
    beam = broker_pid(env["MPNN_BROKER_URL"])
    watched = pids + [os.getpid()] + ([beam] if beam is not None else [])
    step_peak_kib: dict[str, int] = {}
    profilers: list[subprocess.Popen[bytes]] = []
    profiled = {"a": pids[0], "b": pids[1], "scheduler": os.getpid()}

    def on_progress(event: ProgressEvent) -> None:
        if event.accuracy is None and event.state == "running":
            cpu = {pid: cpu_seconds(pid) for pid in watched}
            marks[event.step] = (time.perf_counter(), counting.snapshot(), cpu)
            if event.step == WARM_UP_STEPS + steps:
                step_peak_kib.update({name: read_proc_status_kib(pid, "VmHWM") for name, pid in zip("ab", pids)})
            if py_spy and event.step == WARM_UP_STEPS:
                for name, pid in profiled.items():
                    profilers.append(start_py_spy(py_spy, pid, workdir / f"py-spy-{label}-{name}.txt"))

    try:
        runner = JobRunner(job=job, transport=counting, store=store, dataset=dataset, on_progress=on_progress)
        phases = time_phases(runner)
        await runner.run()
        peak_kib = {name: read_proc_status_kib(p.pid, "VmHWM") for name, p in zip("ab", processes)}
    finally:
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=30)
        stop_workers(processes)
    first, last = WARM_UP_STEPS, WARM_UP_STEPS + steps
    times = [marks[s][0] - marks[s - 1][0] for s in range(first + 1, last + 1)]
    before, after = marks[first][1], marks[last][1]
    traffic = {
        key: ((after[key][0] - before.get(key, (0, 0))[0]) / steps, (after[key][1] - before.get(key, (0, 0))[1]) / steps)
        for key in after
    }
    window_s = marks[last][0] - marks[first][0]
    names = ["a", "b", "scheduler"] + (["broker"] if beam is not None else [])
    cpu = {name: (marks[last][2][pid] - marks[first][2][pid]) / steps for name, pid in zip(names, watched)}
    profiles = {name: workdir / f"py-spy-{label}-{name}.txt" for name in profiled} if py_spy else {}
    return {
        "job": job, "times": times, "traffic": traffic, "peak_kib": peak_kib, "idle_kib": idle_kib, "step_peak_kib": step_peak_kib,
        "cpu_s": cpu, "window_s": window_s, "profiles": profiles,
        "phases": {name: float(np.median(values[first:last])) for name, values in phases.items()},
    }


def report_traffic(label: str, job: JobSpec, result: dict[str, Any]) -> None:
    plan = job.build_plan()
    boundaries = plan.boundary_traffic()
    minimum = sum((b.forward_bytes_per_row + b.backward_bytes_per_row) * BATCH_ROWS for b in boundaries)
    micro_batches = BATCH_ROWS // MICRO_BATCH_ROWS
    header = block_header_bytes(plan, job.name)
    # Worker-to-worker blocks: the boundaries between layers 1..L-1, which never reach the scheduler.
    inner = [b for b in boundaries if 0 < b.lower < plan.depth]
    inner_messages = sum(b.forward_messages + b.backward_messages for b in inner) * micro_batches
    inner_bytes = sum((b.forward_bytes_per_row + b.backward_bytes_per_row) * BATCH_ROWS for b in inner)
    inner_wire = inner_bytes + inner_messages * header
    traffic = result["traffic"]
    print(f"  bytes per step ({label}): minimum from the plan {minimum:,} B")
    for key in sorted(traffic):
        messages, size = traffic[key]
        print(f"    scheduler {key:<20} {messages:8.1f} msgs {size:14,.0f} B")
    print(f"    workers   sent block (plan)    {inner_messages:8.1f} msgs {inner_wire:14,.0f} B "
          f"(arrays {inner_bytes:,} + {header} B header each)")
    scheduler_no_beats = sum(size for key, (_, size) in traffic.items() if "heartbeat" not in key)
    beats = sum(size for key, (_, size) in traffic.items() if "heartbeat" in key)
    total = scheduler_no_beats + inner_wire
    print(f"    total message bodies {total:,.0f} B (+ heartbeats {beats:,.0f} B); "
          f"ratio to minimum {total / minimum:.4f} (target <= 1.02); "
          f"messages {sum(m for k, (m, _) in traffic.items() if 'heartbeat' not in k) + inner_messages:.1f}")


def report_memory(label: str, job: JobSpec, result: dict[str, Any]) -> None:
    plan = job.build_plan()
    for partition in ("a", "b"):
        cost = plan.partition_cost(partition, optimizer="adam")
        expected = cost.memory_bytes(rows_in_flight=IN_FLIGHT * MICRO_BATCH_ROWS)
        peak = result["peak_kib"][partition] * 1024
        idle = result["idle_kib"][partition] / 1024
        during = result["step_peak_kib"][partition] / 1024
        print(f"  worker {partition} ({label}): RSS before the job {idle:,.0f} MiB, peak RSS {during:,.0f} MiB "
              f"up to the last timed step, {peak / 2**20:,.0f} MiB after the final persist; plan estimate "
              f"{expected / 2**20:,.0f} MiB (state {cost.state_bytes / 2**20:,.0f} + activations "
              f"{IN_FLIGHT * MICRO_BATCH_ROWS * cost.activation_bytes_per_row / 2**20:,.0f}), "
              f"ratio {peak / expected:.2f} (target <= 1.3); without the idle process "
              f"{(peak - idle * 2**20) / expected:.2f}")


def worker_blas_threads(partition: str, blas_threads: dict[str, str], env: dict[str, str]) -> int | None:
    """Return the BLAS threads a worker ran with: its --blas-threads, else MPNN_BLAS_THREADS, else 1; None for 0."""
    threads = int(blas_threads.get(partition) or env.get("MPNN_BLAS_THREADS") or DEFAULT_BLAS_THREADS)
    return threads or None


def report_bubble(
    label: str, job: JobSpec, result: dict[str, Any], step_s: float, local_cpu_s: float, worker_threads: dict[str, int | None]
) -> None:
    plan = job.build_plan()
    micro_batches = BATCH_ROWS // MICRO_BATCH_ROWS
    stages = []
    for partition in ("a", "b"):
        # Timed with the worker's own thread count; None keeps this process's default.
        with threadpool_limits(limits=worker_threads[partition], user_api="blas"):
            compute_s, update_s = partition_busy_s(plan, partition, job.optimizer)
        stages.append(compute_s / micro_batches)
        busy = compute_s + update_s
        print(f"  partition {partition} ({label}): busy {busy * 1000:.0f} ms/step "
              f"(fwd+bwd {compute_s * 1000:.0f}, adam {update_s * 1000:.0f}), idle {1 - busy / step_s:.0%} "
              f"of the {step_s * 1000:.0f} ms step; worker CPU {result['cpu_s'][partition] * 1000:.0f} ms/step")
    phases = result["phases"]
    print(f"  scheduler phases (median ms/step): forward and backward of all micro-batches "
          f"{(phases['step'] - phases['apply']) * 1000:.0f}, step.apply to every step.done {phases['apply'] * 1000:.0f}, "
          f"progress record and event {phases['progress'] * 1000:.0f}")
    cpu = result["cpu_s"]
    print(f"  CPU per step: a {cpu['a'] * 1000:.0f} ms, b {cpu['b'] * 1000:.0f} ms, scheduler "
          f"{cpu['scheduler'] * 1000:.0f} ms, broker {cpu.get('broker', float('nan')) * 1000:.0f} ms; "
          f"total {sum(cpu.values()) * 1000:.0f} ms = {sum(cpu.values()) / local_cpu_s:.2f} x the one-process CPU")
    for name, path in result["profiles"].items():
        if path.exists():
            print(f"  py-spy, {name} ({label}): innermost frames by share of samples, {path}")
            print("\n".join(summarize_py_spy(path)))
    if label == "layers":
        k = 2
        ideal = sum(stages) + (micro_batches - 1) * max(stages)
        print(f"  pipeline ({label}): GPipe bubble (K-1)/(M+K-1) = {(k - 1) / (micro_batches + k - 1):.0%} "
              f"for K={k}, M={micro_batches}; with these unequal stages ({stages[0] * 1000:.0f} and "
              f"{stages[1] * 1000:.0f} ms per micro-batch) an ideal pipeline takes {ideal * 1000:.0f} ms "
              f"and leaves the slower stage idle {1 - micro_batches * max(stages) / ideal:.0%}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("MPNN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--plans", default="layers,even")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="NAME=VALUE",
        help="an environment variable for the worker processes only, such as OPENBLAS_NUM_THREADS=1; repeatable",
    )
    parser.add_argument(
        "--blas-threads", metavar="A,B",
        help="--blas-threads of workers a and b, such as 1,2 (default: the worker's default)",
    )
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy executable: profile the workers and this process during the timed steps")
    args = parser.parse_args()

    labels = args.plans.split(",")
    total_steps = WARM_UP_STEPS + args.steps + 1
    dataset = synthetic_dataset(total_steps)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="mpnn-bench-train-"))
    store = Store.open(workdir / "store", create=True)
    env = dict(os.environ, MPNN_BROKER_URL=args.broker, MPNN_NAMESPACE=namespace, MPNN_STORE=str(workdir / "store"))
    counts = args.blas_threads.split(",") if args.blas_threads else []
    blas_threads = dict(zip("ab", counts))
    if args.blas_threads and len(counts) != 2:
        parser.error(f"--blas-threads {args.blas_threads!r}: expected two counts A,B, such as 1,2")
    for setting in args.worker_env:
        name, separator, value = setting.partition("=")
        if not separator or not name:
            parser.error(f"--worker-env {setting!r}: expected NAME=VALUE, such as OPENBLAS_NUM_THREADS=1")
        env[name] = value
    print(machine_line())
    print(f"model: {'-'.join(map(str, WIDTHS))} float32, adam, batch {BATCH_ROWS}, micro-batch "
          f"{MICRO_BATCH_ROWS}, in flight {IN_FLIGHT}, {args.steps} timed steps after {WARM_UP_STEPS} warm-up; "
          f"broker {namespace}; logs {workdir}; worker environment {args.worker_env or 'unchanged'}; "
          f"worker BLAS threads {args.blas_threads or 'default'}")
    reference_job = JobSpec.from_dict(job_document("ref", PLANS["layers"], total_steps))
    reference, local_cpu_s = reference_step_times(reference_job, dataset, args.steps)
    local_s = float(np.median(reference))
    print(f"one process (ReferenceTrainer.train_step): median {local_s * 1000:.0f} ms/step "
          f"(min {min(reference) * 1000:.0f}, max {max(reference) * 1000:.0f}), CPU {local_cpu_s * 1000:.0f} ms/step")
    transport = await open_transport(args.broker, namespace=namespace, max_message_bytes=128 << 20)
    results = {}
    try:
        for label in labels:
            result = await run_distributed(
                label, args.steps, transport, store, dataset, workdir, env, args.py_spy, blas_threads
            )
            results[label] = result
            step_s = float(np.median(result["times"]))
            print(f"distributed {label}: median {step_s * 1000:.0f} ms/step (min {min(result['times']) * 1000:.0f}, "
                  f"max {max(result['times']) * 1000:.0f}); ratio to one process {step_s / local_s:.2f} "
                  f"(target <= {TARGETS[label]}), of the minimums {min(result['times']) / min(reference):.2f}")
            threads = {partition: worker_blas_threads(partition, blas_threads, env) for partition in ("a", "b")}
            report_bubble(label, result["job"], result, step_s, local_cpu_s, threads)
            report_traffic(label, result["job"], result)
            report_memory(label, result["job"], result)
    finally:
        # The shared queue of each partition, and the own queue of each worker of every plan.
        own = [f"w.{label}-{partition}.{partition}" for label in labels for partition in ("a", "b")]
        for queue in ["part.a", "part.b", *own]:
            await transport.delete_queue(transport.queue_name(queue))
        await transport.purge_namespace()
        await transport.close()
        # The store holds hundreds of MB of weights; the logs and profiles stay for reading.
        shutil.rmtree(workdir / "store", ignore_errors=True)
    # Run again after the distributed runs, so a change of machine load between them shows.
    again, _ = reference_step_times(reference_job, dataset, args.steps)
    print(f"one process again: median {float(np.median(again)) * 1000:.0f} ms/step "
          f"(min {min(again) * 1000:.0f}, max {max(again) * 1000:.0f})")
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    asyncio.run(main())
