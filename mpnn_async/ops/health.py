"""`mpnn worker --check` and `mpnn scheduler --check`: one health probe for container health checks.

The probe connects to the broker with the daemon's own settings, declares
each queue the daemon consumes as the daemon would, and creates and removes a
file in the store root. It never consumes a message. Its exit code is 0 when both the
broker and the store pass, BROKER_UNREACHABLE (4) when the broker fails,
STORE_UNUSABLE (5) when only the store fails, and CONFIG_ERROR (3) when a
queue exists with other properties than the daemon declares.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import tempfile
import threading
from collections.abc import Sequence

from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.errors import InvalidInputError, MpnnError, TransportError
from mpnn_async.runtime.protocol import JOBS_QUEUE, JOBS_ROUTING_KEY, partition_binding
from mpnn_async.settings import RuntimeSettings
from mpnn_async.store import Store
from mpnn_async.transport import RabbitMQSettings, create_transport, redact_url
from mpnn_async.transport.base import QueueNotFoundError, Transport

__all__ = [
    "CHECK_TIMEOUT_S",
    "CheckResult",
    "HealthReport",
    "QueueSpec",
    "add_check_argument",
    "check_broker",
    "check_health",
    "check_store",
    "run_health_check",
    "scheduler_queues",
    "worker_queues",
]

# Time for each broker operation (connect, one queue look-up) and for the
# store probe. Docker's default health-check timeout is 30 s.
CHECK_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QueueSpec:
    """A queue a daemon consumes: its name local to the namespace and its binding patterns."""

    local_name: str
    routing_keys: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The outcome of one check: whether it passed, and a one-phrase description."""

    passed: bool
    detail: str
    # The exit code this failure maps to; OK when the check passed.
    exit_code: ExitCode = ExitCode.OK


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    broker: CheckResult
    store: CheckResult

    @property
    def healthy(self) -> bool:
        return self.broker.passed and self.store.passed

    @property
    def exit_code(self) -> ExitCode:
        """The broker's failure first, then the store's, else OK."""
        if not self.broker.passed:
            return self.broker.exit_code
        if not self.store.passed:
            return self.store.exit_code
        return ExitCode.OK

    def line(self, command: str) -> str:
        status = "healthy" if self.healthy else "unhealthy"
        return f"mpnn {command} --check: {status}: {self.broker.detail}; {self.store.detail}"


def add_check_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the broker, the queues this daemon consumes and the store, print one line and exit: "
        "0 healthy, 4 broker unreachable, 5 store unusable; consumes no message",
    )


def worker_queues(partitions: Sequence[str]) -> list[QueueSpec]:
    """Return the queues `mpnn worker` consumes for `partitions`, declared as `Worker.start` declares them."""
    return [QueueSpec(local_name=f"part.{name}", routing_keys=(partition_binding(name),)) for name in partitions]


def scheduler_queues() -> list[QueueSpec]:
    """Return the job queue that `mpnn scheduler` consumes."""
    return [QueueSpec(local_name=JOBS_QUEUE, routing_keys=(JOBS_ROUTING_KEY,))]


def run_health_check(
    settings: RuntimeSettings, *, command: str, queues: Sequence[QueueSpec], timeout_s: float = CHECK_TIMEOUT_S
) -> ExitCode:
    """Run both checks, print one status line on stdout and return the exit code."""
    report = check_health(settings, queues=queues, timeout_s=timeout_s)
    print(report.line(command), flush=True)
    return report.exit_code


def check_health(
    settings: RuntimeSettings, *, queues: Sequence[QueueSpec], timeout_s: float = CHECK_TIMEOUT_S
) -> HealthReport:
    # The store probe runs first and outside the event loop: a thread stuck in
    # a hard NFS mount must not keep asyncio.run from returning.
    store = check_store(settings.store, timeout_s=timeout_s)
    broker = asyncio.run(check_broker(settings, queues=queues, timeout_s=timeout_s))
    return HealthReport(broker=broker, store=store)


async def check_broker(
    settings: RuntimeSettings, *, queues: Sequence[QueueSpec], timeout_s: float = CHECK_TIMEOUT_S
) -> CheckResult:
    """Connect once without retries, then look up each queue and declare it as the daemon does.

    The declaration creates a missing queue, so the check passes before the
    daemon's first start, and it fails when a queue of that name has other
    properties than the daemon declares.
    """
    where = f"broker {redact_url(settings.broker_url)} namespace {settings.namespace}"
    transport = create_transport(
        settings.broker_url,
        namespace=settings.namespace,
        max_message_bytes=settings.max_message_bytes,
        rabbitmq_settings=RabbitMQSettings(
            connect_timeout_s=timeout_s,
            connect_attempts=1,
            operation_timeout_s=timeout_s,
            publish_timeout_s=timeout_s,
        ),
    )
    found: list[str] = []
    try:
        await transport.connect()
        for queue in queues:
            found.append(await _look_up_queue(transport, queue))
    except TransportError as error:
        return CheckResult(passed=False, detail=f"{where} unreachable: {error}", exit_code=ExitCode.BROKER_UNREACHABLE)
    except InvalidInputError as error:
        return CheckResult(passed=False, detail=f"{where}: {error}", exit_code=ExitCode.CONFIG_ERROR)
    finally:
        await transport.close()
    return CheckResult(passed=True, detail=f"{where} reachable, {', '.join(found) or 'no queues to check'}")


async def _look_up_queue(transport: Transport, queue: QueueSpec) -> str:
    full_name = transport.queue_name(queue.local_name)
    try:
        depth: int | None = await transport.queue_depth(full_name)
    except QueueNotFoundError:
        depth = None
    # Declaring an existing queue with the same properties changes nothing, and
    # with other properties raises QueueMismatchError, as it would at the daemon's start.
    await transport.declare_queue(queue.local_name, queue.routing_keys, durable=True)
    if depth is None:
        return f"queue {full_name} declared"
    return f"queue {full_name} has {depth} ready"


def check_store(root: str, *, timeout_s: float = CHECK_TIMEOUT_S) -> CheckResult:
    """Check that the store root exists and is writable: create, fsync and remove a temporary file.

    The probe runs in a daemon thread, so a hard NFS mount whose server does
    not answer fails the check after `timeout_s` instead of hanging it.
    """
    outcome: list[CheckResult] = []
    thread = threading.Thread(
        target=lambda: outcome.append(_probe_store(root)), name="mpnn-store-check", daemon=True
    )
    thread.start()
    thread.join(timeout_s)
    if outcome:
        return outcome[0]
    return CheckResult(
        passed=False,
        detail=f"store {root} did not answer within {timeout_s:g} s; check the NFS mount and its server",
        exit_code=ExitCode.STORE_UNUSABLE,
    )


def _probe_store(root: str) -> CheckResult:
    try:
        store = Store(root)
        # The store's own temporary files start with `.tmp.`, so no key can collide with this name.
        descriptor, path = tempfile.mkstemp(prefix=".tmp.health-check.", dir=store.root)
        try:
            os.write(descriptor, b"mpnn health check\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            os.unlink(path)
    except MpnnError as error:
        return CheckResult(passed=False, detail=f"store unusable: {error}", exit_code=ExitCode.STORE_UNUSABLE)
    except OSError as error:
        return CheckResult(
            passed=False,
            detail=f"store {root} unusable: could not create and remove a file in it: {error}",
            exit_code=ExitCode.STORE_UNUSABLE,
        )
    return CheckResult(passed=True, detail=f"store {store.root} writable")
