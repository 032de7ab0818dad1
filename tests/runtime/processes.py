"""Start `mpnn` daemons as real OS processes and stop them with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class Daemons:
    """Processes started by one test; `stop_all` sends SIGTERM and collects exit codes."""

    def __init__(self, *, broker_url: str, namespace: str, store: Path, log_dir: Path) -> None:
        self.broker_url = broker_url
        self.namespace = namespace
        self.store = store
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started: set[str] = set()
        # Process name -> partition, for the worker processes.
        self.partitions: dict[str, str] = {}

    def environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        environment["MPNN_BROKER_URL"] = self.broker_url
        environment["MPNN_NAMESPACE"] = self.namespace
        environment["MPNN_STORE"] = str(self.store)
        return environment

    def start(self, name: str, *arguments: str, prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start `mpnn ARGUMENTS`; `prefix` wraps it, for example in `ip netns exec NAME`."""
        log_file = open(self.log_dir / f"{name}.log", "wb")
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "mpnn_async", "-v", *arguments],
            env=self.environment(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        self.processes[name] = process
        self.started.add(name)
        return process

    def declared_queues(self) -> list[str]:
        """Return the queue names (local to the namespace) that the started daemons declare."""
        queues = sorted({f"part.{partition}" for partition in self.partitions.values()})
        # Killed daemons leave `processes`, so the queues are known from every name ever started.
        if any(name.startswith("scheduler") for name in self.started):
            queues.append("jobs")
        queues += [f"infer.{name.removeprefix('serve-')}" for name in self.started if name.startswith("serve-")]
        return queues

    def serve(self, model: str, snapshot: str, *extra: str) -> subprocess.Popen[bytes]:
        return self.start(f"serve-{model}", "serve", model, "--snapshot", snapshot, *extra)

    def worker(
        self, partition: str, *extra: str, name: str | None = None, prefix: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        name = name or f"worker-{partition}"
        self.partitions[name] = partition
        # A short drain bounds how long a test waits for the worker to stop.
        return self.start(
            name, "worker", "--partition", partition, "--shutdown-timeout", "10", *extra, prefix=prefix
        )

    def kill(self, name: str) -> int:
        """SIGKILL a daemon and return its exit status (-9)."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=30)

    def run(self, *arguments: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mpnn_async", *arguments],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, *, timeout_s: float = 45) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{name} did not exit within {timeout_s} s of SIGTERM:\n{self.log(name)}")

    def stop_all(self) -> dict[str, int]:
        """Stop every daemon, even when one of them fails to stop, then report the failures."""
        codes: dict[str, int] = {}
        failures: list[str] = []
        for name in list(self.processes):
            try:
                codes[name] = self.stop(name)
            except AssertionError as error:
                failures.append(str(error))
        if failures:
            raise AssertionError("\n".join(failures))
        return codes


def wait_until(predicate, *, timeout_s: float, what: str, interval_s: float = 0.1, details=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{details()}")
