"""Helpers of the pipeline benchmarks: synthetic data, job documents, worker processes, step windows."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mpnn_async.data import Dataset
from mpnn_async.runtime.scheduler import JobRunner

__all__ = [
    "WorkerPool",
    "busy_seconds",
    "job_document",
    "layer_plan",
    "record_step_windows",
    "synthetic_dataset",
]

BENCH = Path(__file__).resolve().parent


def synthetic_dataset(rows: int, features: int, classes: int) -> Dataset:
    """Random float32 inputs and labels; the benchmarks time steps, not learning."""
    rng = np.random.default_rng(0)
    return Dataset(
        name="synthetic",
        x_train=rng.standard_normal((rows, features), dtype=np.float32),
        y_train=rng.integers(0, classes, rows, dtype=np.int64),
        x_test=rng.standard_normal((64, features), dtype=np.float32),
        y_test=rng.integers(0, classes, 64, dtype=np.int64),
        classes=classes,
        features=features,
    )


def layer_plan(partitions: list[str], depth: int) -> dict[str, Any]:
    """Return a plan that gives partition i layer i+1, and the last partition every layer from its own on."""
    layers = [{"layers": [index + 1], "strategy": "whole", "partition": name} for index, name in enumerate(partitions[:-1])]
    rest = list(range(len(partitions), depth + 1))
    layers.append({"layers": rest, "strategy": "whole", "partition": partitions[-1]})
    return {"partitions": partitions, "layers": layers}


def job_document(
    name: str, widths: tuple[int, ...], plan: dict[str, Any], *, batch_rows: int, micro_batch_rows: int,
    in_flight: int, steps: int,
) -> dict[str, Any]:
    """Return a job of `steps` Adam steps on a float32 relu network ending in softmax cross-entropy."""
    activations = ["relu"] * (len(widths) - 2) + ["identity"]
    return {
        "job": {
            "name": name,
            "batch_rows": batch_rows,
            "micro_batch_rows": micro_batch_rows,
            "in_flight": in_flight,
            "max_steps": steps,
            # Only the job's last step persists the weights, so the timed steps never do.
            "persist_every_steps": 1_000_000,
        },
        "model": {
            "input": widths[0],
            "dtype": "float32",
            "loss": "softmax_cross_entropy",
            "seed": 0,
            "layers": [{"width": w, "activation": a} for w, a in zip(widths[1:], activations)],
        },
        "plan": plan,
        "optimizer": {"kind": "adam", "learning_rate": 0.001},
        # Not loaded: the runner gets a synthetic dataset.
        "dataset": {"name": "mnist-5k"},
    }


def record_step_windows(runner: JobRunner) -> list[tuple[float, float]]:
    """Wrap the runner's `_run_step` and return the list it fills with each step's (start, end) monotonic times."""
    windows: list[tuple[float, float]] = []
    run_step = runner._run_step

    async def timed_run_step(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = await run_step(*args, **kwargs)
        windows.append((started, time.monotonic()))
        return result

    runner._run_step = timed_run_step  # type: ignore[method-assign]
    return windows


def busy_seconds(intervals: list[list[Any]], start: float, end: float, kind: str | None = None) -> float:
    """Return the time inside [start, end] covered by the intervals (of one `kind`, or all)."""
    total = 0.0
    for interval_kind, begin, finish in intervals:
        if kind is None or interval_kind == kind:
            total += max(0.0, min(finish, end) - max(begin, start))
    return total


class WorkerPool:
    """`mpnn worker` processes, one per partition, run through busy_worker.py; a context manager.

    After the pool exits, `intervals[partition]` contains that worker's compute
    and apply intervals (see busy_worker.py).
    """

    def __init__(
        self, partitions: list[str], env: dict[str, str], workdir: Path, *, label: str,
        arguments: dict[str, list[str]] | None = None,
    ) -> None:
        self.partitions = partitions
        self.env = env
        self.workdir = workdir
        self.label = label
        # Extra `mpnn worker` options per partition.
        self.arguments = arguments or {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.intervals: dict[str, list[list[Any]]] = {}

    def path(self, partition: str, suffix: str) -> Path:
        return self.workdir / f"worker-{self.label}-{partition}.{suffix}"

    def worker_id(self, partition: str) -> str:
        return f"{self.label}-{partition}"

    def queues(self) -> list[str]:
        """Return the queues, local to the namespace, that the workers declare: shared and own."""
        return [f"part.{p}" for p in self.partitions] + [f"w.{self.worker_id(p)}.{p}" for p in self.partitions]

    def __enter__(self) -> WorkerPool:
        for partition in self.partitions:
            command = [
                sys.executable, str(BENCH / "busy_worker.py"), str(self.path(partition, "json")),
                "-v", "worker", "--partition", partition, "--worker-id", self.worker_id(partition),
                *self.arguments.get(partition, []),
            ]
            # The child keeps its own copy of the log's file descriptor.
            with open(self.path(partition, "log"), "wb") as log:
                self.processes.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT))
        for partition in self.partitions:
            self._wait_for_start(partition, timeout_s=60)
        return self

    def _wait_for_start(self, partition: str, timeout_s: float) -> None:
        log = self.path(partition, "log")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if log.exists() and "worker.started" in log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise SystemExit(f"timed out after {timeout_s} s waiting for worker.started in {log}")

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for partition in self.partitions:
            path = self.path(partition, "json")
            self.intervals[partition] = orjson.loads(path.read_bytes()) if path.exists() else []
