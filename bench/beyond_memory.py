"""Train a network whose weights and Adam state are 3x one worker's memory limit, on 4 limited workers.

One run, on this machine:

- sizes a float64 MLP (input and four hidden layers of `width` neurons, 10
  outputs) so that its weights plus Adam state (twice the weights) are at
  least `--ratio` (default 3.3) times `--limit-mib`;
- starts 4 `mpnn worker` processes (partitions a..d, every layer split
  evenly), each under `setrlimit(RLIMIT_DATA, limit)` and with
  `--optimizer-state-dir`, so each keeps its Adam state in a local file;
- trains `--steps` steps with `JobRunner` in this process (no limit here),
  persisting every step, over RabbitMQ;
- samples each worker's VmData (what RLIMIT_DATA bounds) every 20 ms, and
  reads its peak RSS (VmHWM) before stopping it;
- trains the single-process `ReferenceTrainer` on the same batches in this
  process and compares sampled rows of every layer's weights and Adam state
  with the stored partitions (float64, max abs difference <= 1e-10).

RLIMIT_DATA bounds a process's private writable mappings (heap, anonymous
mmaps such as NumPy arrays, thread stacks, OpenBLAS buffers), so an
allocation past the limit fails with MemoryError. It does not count file
pages in the page cache, which is where the optimizer state files live.
RLIMIT_AS would also count read-only mappings of shared libraries.

With `--state-in-ram` it runs the same job with the workers keeping Adam's
state in RAM instead, under the same limit, and reports how it fails.

Usage:

    python bench/beyond_memory.py [--broker URL] [--limit-mib 512] [--ratio 3.3] [--steps 3]
    python bench/beyond_memory.py --state-in-ram     # the same job without state files: it must fail
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import machine_line, read_proc_status_kib

from mpnn_async.data import Dataset
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.reference_run import train_reference
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.store import ModelStore, Store
from mpnn_async.transport import open_transport

PARTITIONS = ("a", "b", "c", "d")
HIDDEN_LAYERS = 4
CLASSES = 10
BATCH_ROWS = 64
MICRO_BATCH_ROWS = 32
IN_FLIGHT = 2
MIB = 1 << 20
# Rows of each layer per partition compared with the reference.
SAMPLED_ROWS = 8


def width_for(weights_bytes: int) -> int:
    """Return the smallest multiple of 64 whose network has at least `weights_bytes` of float64 weights."""
    width = 64
    while weight_bytes(width) < weights_bytes:
        width += 64
    return width


def weight_bytes(width: int) -> int:
    parameters = HIDDEN_LAYERS * (width * width + width) + CLASSES * (width + 1)
    return parameters * 8


def job_document(name: str, width: int, steps: int) -> dict[str, Any]:
    layers = [{"width": width, "activation": "tanh"} for _ in range(HIDDEN_LAYERS)]
    layers.append({"width": CLASSES, "activation": "identity"})
    return {
        "job": {
            "name": name,
            "batch_rows": BATCH_ROWS,
            "micro_batch_rows": MICRO_BATCH_ROWS,
            "in_flight": IN_FLIGHT,
            "max_steps": steps,
            "persist_every_steps": 1,
        },
        "model": {"input": width, "dtype": "float64", "loss": "softmax_cross_entropy", "seed": 0, "layers": layers},
        "plan": {"partitions": list(PARTITIONS), "default": {"strategy": "even"}},
        "optimizer": {"kind": "adam", "learning_rate": 0.001},
        # Not loaded: the runner gets the synthetic dataset below.
        "dataset": {"name": "mnist-5k"},
    }


def synthetic_dataset(width: int, steps: int) -> Dataset:
    rng = np.random.default_rng(0)
    rows = BATCH_ROWS * steps
    return Dataset(
        name="synthetic",
        x_train=rng.standard_normal((rows, width)),
        y_train=rng.integers(0, CLASSES, rows, dtype=np.int64),
        x_test=rng.standard_normal((BATCH_ROWS, width)),
        y_test=rng.integers(0, CLASSES, BATCH_ROWS, dtype=np.int64),
        classes=CLASSES,
        features=width,
    )


class MemorySampler:
    """Samples VmData and VmRSS of some processes every `interval_s`, keeping the maximum of each."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.02) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak_data_kib = dict.fromkeys(pids, 0)
        self.peak_rss_kib = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name, pid in self.pids.items():
                try:
                    data = read_proc_status_kib(pid, "VmData")
                    rss = read_proc_status_kib(pid, "VmRSS")
                except (OSError, KeyError):
                    continue
                self.peak_data_kib[name] = max(self.peak_data_kib[name], data)
                self.peak_rss_kib[name] = max(self.peak_rss_kib[name], rss)


def limit_data(limit_bytes: int) -> None:
    """Runs in the child before exec: cap its private writable memory."""
    resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))


def start_workers(
    workdir: Path, env: dict[str, str], limit_bytes: int, state_dir: Path | None
) -> dict[str, subprocess.Popen[bytes]]:
    processes = {}
    state_arguments = ["--optimizer-state-dir", str(state_dir)] if state_dir is not None else []
    for partition in PARTITIONS:
        # The child keeps its own copy of the log's file descriptor.
        with open(workdir / f"worker-{partition}.log", "wb") as log:
            processes[partition] = subprocess.Popen(
                [
                    sys.executable, "-m", "mpnn_async", "-v", "worker", "--partition", partition,
                    # Four workers share the cores; one BLAS thread each also keeps its buffers small.
                    "--blas-threads", "1",
                    *state_arguments,
                ],
                env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=lambda: limit_data(limit_bytes),
            )
    return processes


def wait_for_line(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {text!r} in {path}")


def data_limit_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max data size"):
            return line.split()[3]
    return "unknown"


def stop_workers(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def compare_sample(store: Store, job: JobSpec, reference: Any) -> tuple[float, float, int]:
    """Return the max abs difference of sampled weight rows and of their Adam state, and the rows compared."""
    plan = job.build_plan()
    model_store = ModelStore(store, job.training.store_model)
    rng = np.random.default_rng(1)
    weight_error = state_error = 0.0
    compared = 0
    for partition in plan.partitions:
        with store.open_version(model_store.partition_key(partition)) as reader:
            for layer in plan.layers_of(partition):
                neurons = plan.neurons(partition, layer)
                picks = rng.choice(len(neurons), size=min(SAMPLED_ROWS, len(neurons)), replace=False)
                rows = neurons[picks]
                reference_weights, _ = reference.parameters[layer - 1]
                reference_state, _ = reference.optimizer_state[layer - 1]
                stored = reader.read(f"W{layer}")[picks]
                weight_error = max(weight_error, float(np.max(np.abs(stored - reference_weights[rows]))))
                for name in ("exp_avg", "exp_avg_sq"):
                    stored_state = reader.read(f"W{layer}.{name}")[picks]
                    difference = np.abs(stored_state - reference_state[name][rows])
                    state_error = max(state_error, float(np.max(difference)))
                compared += len(rows)
    return weight_error, state_error, compared


def report_sizes(plan: Any, width: int, limit_bytes: int, steps: int, namespace: str, workdir: Path) -> None:
    weights_total = weight_bytes(width)
    adam_total = 2 * weights_total
    print(f"model: {width}-" + "-".join([str(width)] * HIDDEN_LAYERS) + f"-{CLASSES} float64, adam, "
          f"batch {BATCH_ROWS}, micro-batch {MICRO_BATCH_ROWS}, in flight {IN_FLIGHT}, {steps} steps, "
          f"persisting every step; partitions {','.join(PARTITIONS)} split every layer evenly; broker {namespace}; "
          f"logs {workdir}")
    print(f"sizes: weights {weights_total / MIB:,.0f} MiB + Adam state {adam_total / MIB:,.0f} MiB = "
          f"{(weights_total + adam_total) / MIB:,.0f} MiB = {(weights_total + adam_total) / limit_bytes:.2f} x the "
          f"per-worker limit of {limit_bytes / MIB:,.0f} MiB (RLIMIT_DATA)")
    for partition in PARTITIONS:
        parameter_bytes = plan.partition_cost(partition, optimizer="adam").parameter_bytes
        resident = 2 * parameter_bytes
        print(f"  partition {partition}: weights {parameter_bytes / MIB:,.0f} MiB + gradient accumulators "
              f"{parameter_bytes / MIB:,.0f} MiB resident ({resident / limit_bytes:.0%} of the limit); "
              f"Adam state {2 * parameter_bytes / MIB:,.0f} MiB in its state file, which in RAM would make "
              f"{2 * resident / MIB:,.0f} MiB ({2 * resident / limit_bytes:.0%} of the limit)")


async def run_distributed(
    job: JobSpec, dataset: Dataset, store: Store, transport: Any, workdir: Path, env: dict[str, str],
    limit_bytes: int, state_dir: Path | None, step_timeout_s: float,
) -> dict[str, Any]:
    """Run the job with 4 limited workers; return the result (or the error) and each worker's memory."""
    processes = start_workers(workdir, env, limit_bytes, state_dir)
    started = time.monotonic()
    result: Any = None
    error: BaseException | None = None
    try:
        for partition in PARTITIONS:
            wait_for_line(workdir / f"worker-{partition}.log", "worker.started", 120)
        idle_kib = {name: read_proc_status_kib(p.pid, "VmData") for name, p in processes.items()}
        limits = {name: data_limit_of(p.pid) for name, p in processes.items()}
        with MemorySampler({name: p.pid for name, p in processes.items()}) as sampler:
            runner = JobRunner(
                job=job, transport=transport, store=store, dataset=dataset,
                ready_timeout_s=300, step_timeout_s=step_timeout_s, heartbeat_timeout_s=60, max_recoveries=0,
            )
            try:
                result = await runner.run()
            except Exception as failure:  # noqa: BLE001 - reported, and expected with --state-in-ram
                error = failure
        hwm_kib = {name: read_proc_status_kib(p.pid, "VmHWM") for name, p in processes.items()}
    finally:
        stop_workers(processes)
        # purge_namespace deletes only the queues this transport declared; the workers declared these.
        for partition in PARTITIONS:
            await transport.delete_queue(transport.queue_name(f"part.{partition}"))
    return {
        "result": result, "error": error, "elapsed_s": time.monotonic() - started, "idle_kib": idle_kib,
        "limits": limits, "peak_data_kib": sampler.peak_data_kib, "hwm_kib": hwm_kib,
        "exit_codes": {name: p.returncode for name, p in processes.items()},
    }


def report_workers(run: dict[str, Any], limit_bytes: int) -> None:
    for partition in PARTITIONS:
        peak_data = run["peak_data_kib"][partition]
        print(f"  worker {partition}: RLIMIT_DATA {run['limits'][partition]} bytes; VmData idle "
              f"{run['idle_kib'][partition] / 1024:,.0f} MiB, peak {peak_data / 1024:,.0f} MiB "
              f"(sampled every 20 ms, {peak_data * 1024 / limit_bytes:.0%} of the limit); "
              f"peak RSS (VmHWM) {run['hwm_kib'][partition] / 1024:,.0f} MiB")


def memory_errors(workdir: Path) -> list[str]:
    lines = []
    for partition in PARTITIONS:
        text = (workdir / f"worker-{partition}.log").read_text(errors="replace")
        lines += [f"worker {partition}: {line.strip()}" for line in text.splitlines() if "MemoryError" in line]
    return lines


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("MPNN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--limit-mib", type=int, default=512, help="RLIMIT_DATA of each worker, in MiB (default 512)")
    parser.add_argument("--ratio", type=float, default=3.3, help="weights plus Adam state over the limit (default 3.3)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps to train (default 3)")
    parser.add_argument(
        "--state-in-ram", action="store_true",
        help="run without --optimizer-state-dir to show that the job then fails under the limit",
    )
    args = parser.parse_args()

    limit_bytes = args.limit_mib * MIB
    # Weights plus Adam state are 3x the weights.
    width = width_for(math.ceil(args.ratio * limit_bytes / 3))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="mpnn-bench-beyond-"))
    state_dir = None if args.state_in_ram else workdir / "optimizer-state"
    if state_dir is not None:
        state_dir.mkdir()
    store = Store.open(workdir / "store", create=True)
    job = JobSpec.from_dict(job_document("beyond-memory", width, args.steps))
    dataset = synthetic_dataset(width, args.steps)
    print(machine_line())
    report_sizes(job.build_plan(), width, limit_bytes, args.steps, namespace, workdir)

    env = dict(
        os.environ, MPNN_BROKER_URL=args.broker, MPNN_NAMESPACE=namespace, MPNN_STORE=str(workdir / "store"),
        PYTHONPATH=str(ROOT),
    )
    transport = await open_transport(args.broker, namespace=namespace, max_message_bytes=128 * MIB)
    try:
        # Without state files the first step fails at once, so a short timeout ends that run.
        run = await run_distributed(
            job, dataset, store, transport, workdir, env, limit_bytes, state_dir,
            step_timeout_s=60 if args.state_in_ram else 1200,
        )
    finally:
        await transport.purge_namespace()
        await transport.close()
    if args.state_in_ram:
        return report_state_in_ram(run, workdir, limit_bytes)

    result = run["result"]
    if result is None:
        report_workers(run, limit_bytes)
        print(f"FAILED: the job failed: {run['error']!r}; see the worker logs in {workdir}")
        return 1
    print(f"distributed: {result.steps} steps in {run['elapsed_s']:.0f} s (workers started, job run, workers "
          f"stopped); worker exit codes {run['exit_codes']}")
    report_workers(run, limit_bytes)
    started = time.monotonic()
    reference = train_reference(job, dataset)
    weight_error, state_error, rows = compare_sample(store, job, reference)
    print(f"reference: ReferenceTrainer in this process, {reference.steps_done} steps in "
          f"{time.monotonic() - started:.0f} s; {rows} sampled rows of W (every layer, every partition): "
          f"max abs difference of weights {weight_error:.2e}, of Adam state {state_error:.2e} (target <= 1e-10)")
    shutil.rmtree(workdir / "store", ignore_errors=True)
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if not (max(weight_error, state_error) <= 1e-10 and reference.steps_done == result.steps == args.steps):
        print("FAILED: the distributed weights do not match the reference")
        return 1
    return 0


def report_state_in_ram(run: dict[str, Any], workdir: Path, limit_bytes: int) -> int:
    shutil.rmtree(workdir / "store", ignore_errors=True)
    report_workers(run, limit_bytes)
    errors = memory_errors(workdir)
    print(f"state in RAM: the job {'failed' if run['result'] is None else 'finished'} after "
          f"{run['elapsed_s']:.0f} s ({run['error']!r}); MemoryError lines in the worker logs: {len(errors)}")
    for line in errors[:4]:
        print(f"  {line[:300]}")
    return 0 if run["result"] is None and errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
