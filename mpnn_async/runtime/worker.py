"""The partition worker daemon: consumes its partitions' queues and computes their neurons."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import os
import re
import socket
import uuid
from typing import Any, Callable, Sequence

from mpnn_async.errors import ConfigError, TransportError
from mpnn_async.planning.naming import validate_partition_names
from mpnn_async.runtime.hosted_jobs import HostedJobs
from mpnn_async.runtime.partition import RejectedBlock
from mpnn_async.runtime.protocol import (
    HEARTBEATS_ROUTING_KEY,
    ControlType,
    Rejection,
    assignment_routing_key,
    control,
    parse_control,
    partition_binding,
    replica_binding,
)
from mpnn_async.store import Store
from mpnn_async.transport.base import Delivery, Outgoing, QueueNotFoundError, Transport
from mpnn_async.wire import CodecError, is_data_frame

__all__ = ["Worker", "WorkerState", "default_worker_id"]

log = logging.getLogger(__name__)

# A consumer cancel that takes longer than this is abandoned during shutdown;
# closing the connection then returns its unacknowledged messages to the queue.
_CANCEL_TIMEOUT_S = 5.0

# A worker's own queues outlive a lost connection by this long, so a worker cut off
# for a while finds its queues again, and the queues of a dead worker go away.
_WORKER_QUEUE_EXPIRES_S = 600.0


def default_worker_id() -> str:
    """Return `<host>-<pid>` with every character that a routing key word cannot hold replaced."""
    pid = str(os.getpid())
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()).lstrip("-_") or "worker"
    # The host name is cut, never the pid, so two workers of one host never share an id.
    return f"{host[: 63 - len(pid)]}-{pid}"


class WorkerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Worker:
    """Hosts partitions: their queues and one in-order handler per partition, all jobs alike.

    A worker started with partitions hosts them for ever. A worker started
    without any joins the pool: it waits on its assignment queue and hosts
    whatever partitions a scheduler assigns it, changing them as the pool changes.

    Each hosted partition has two queues: the shared `part.<partition>`, which
    competing workers of the partition take turns on (serving requests), and
    the worker's own `w.<worker>.<partition>`, which receives what a route sends
    to this replica (training blocks, job and step control).
    """

    def __init__(
        self,
        *,
        transport: Transport,
        store: Store,
        partitions: Sequence[str] = (),
        worker_id: str | None = None,
        prefetch: int = 256,
        max_message_bytes: int = 128 * 1024 * 1024,
        executor: concurrent.futures.Executor | None = None,
        heartbeat_s: float = 0.5,
        on_fatal: Callable[[str], None] | None = None,
        max_partitions: int = 4,
        optimizer_state_dir: str = "",
    ) -> None:
        self.transport = transport
        self.store = store
        self.partitions: tuple[str, ...] = ()
        self._fixed_partitions = tuple(partitions)
        # A pool worker (started without partitions) takes assignments from schedulers.
        self.assignable = not partitions
        self.worker_id = worker_id or default_worker_id()
        # Tells this process apart from another one started with the same worker id.
        self.instance = uuid.uuid4().hex[:12]
        self.prefetch = prefetch
        self.max_message_bytes = max_message_bytes
        self.heartbeat_s = heartbeat_s
        # Called with a reason when the worker cannot go on (its queue was deleted).
        self.on_fatal = on_fatal
        self.fatal_reason: str | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._heartbeats_stopped = asyncio.Event()
        # partition -> [(queue, consumer tag)]
        self._hosted: dict[str, list[tuple[str, str]]] = {}
        self._assignment_tag: str | None = None
        self._assignment_lock = asyncio.Lock()
        # One lock per partition: its two queues' handlers must not interleave.
        self._partition_locks: dict[str, asyncio.Lock] = {}
        self.state = WorkerState.CREATED
        self.counters = {"received": 0, "dead_lettered": 0, "duplicates": 0, "superseded": 0}
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=max(len(partitions), max_partitions), thread_name_prefix="mpnn-compute"
        )
        self.jobs = HostedJobs(
            transport=transport,
            store=store,
            executor=self._executor,
            worker_id=self.worker_id,
            prefetch=prefetch,
            max_message_bytes=max_message_bytes,
            counters=self.counters,
            optimizer_state_dir=optimizer_state_dir,
        )

    def __repr__(self) -> str:
        return (
            f"<Worker {self.worker_id} partitions={list(self.partitions)} {self.state.name} "
            f"jobs={self.jobs.names()} received={self.counters['received']}>"
        )

    @property
    def queues(self) -> list[str]:
        """Full names of the queues this worker consumes for its partitions."""
        return [queue for queues in self._hosted.values() for queue, _ in queues]

    async def start(self) -> None:
        """Declare this worker's queues and start consuming them."""
        for partition in self._fixed_partitions:
            await self._host(partition)
        if self.assignable:
            queue = await self.transport.declare_queue(
                f"assign.{self.worker_id}",
                [assignment_routing_key(self.worker_id)],
                durable=False,
                expires_s=_WORKER_QUEUE_EXPIRES_S,
            )
            self._assignment_tag = await self.transport.consume(queue, self._on_assignment, prefetch=4)
        self.state = WorkerState.RUNNING
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        log.info(
            "worker.started worker=%s partitions=%s pool=%s prefetch=%d",
            self.worker_id,
            ",".join(self.partitions) or "-",
            self.assignable,
            self.prefetch,
        )

    async def _host(self, partition: str) -> None:
        """Start consuming the shared and the own queue of a partition."""
        shared = await self.transport.declare_queue(f"part.{partition}", [partition_binding(partition)], durable=True)
        own = await self.transport.declare_queue(
            f"w.{self.worker_id}.{partition}",
            [replica_binding(self.worker_id, partition)],
            durable=True,
            expires_s=_WORKER_QUEUE_EXPIRES_S,
        )
        handler = self._handler_for(partition)
        queues = []
        for queue in (own, shared):
            queues.append((queue, await self.transport.consume(queue, handler, prefetch=self.prefetch)))
        self._hosted[partition] = queues
        self.partitions = tuple(self._hosted)

    async def _unhost(self, partition: str) -> None:
        """Stop consuming a partition's queues and drop its jobs; held blocks go back to the queue."""
        for queue, tag in self._hosted.pop(partition, []):
            await self._cancel_consumer(tag)
            if queue.endswith(f"w.{self.worker_id}.{partition}"):
                with contextlib.suppress(TransportError):
                    await self.transport.delete_queue(queue)
        self.partitions = tuple(self._hosted)
        await self.jobs.drop_partition(partition)

    async def _on_assignment(self, delivery: Delivery) -> None:
        try:
            kind, payload = parse_control(delivery.body, max_size_bytes=self.max_message_bytes)
        except CodecError as error:
            await self._dead_letter(delivery, str(error.reason), str(error), "-")
            return
        requested = [str(name) for name in payload.get("partitions", [])]
        problem = ""
        if kind is not ControlType.WORKER_ASSIGN or payload["worker"] != self.worker_id:
            problem = f"{kind} for worker {payload.get('worker')!r} reached the assignment queue of {self.worker_id!r}"
        else:
            try:
                # An empty list releases the worker back to the pool.
                if requested:
                    validate_partition_names(requested, "partitions")
            except ConfigError as error:
                problem = str(error)
        if problem:
            await self._dead_letter(delivery, str(Rejection.INVALID_CONTROL), problem, "-")
            return
        async with self._assignment_lock:
            for partition in [p for p in self.partitions if p not in requested]:
                await self._unhost(partition)
            for partition in [p for p in requested if p not in self._hosted]:
                await self._host(partition)
        log.info("worker.assigned worker=%s partitions=%s", self.worker_id, ",".join(self.partitions) or "-")
        await delivery.ack()
        # Tell schedulers at once instead of at the next beat.
        await self._beat()

    async def _cancel_consumer(self, tag: str) -> None:
        try:
            await asyncio.wait_for(self.transport.cancel(tag), _CANCEL_TIMEOUT_S)
        except (asyncio.TimeoutError, TransportError) as error:
            log.warning("worker.cancel_failed worker=%s tag=%s error=%r", self.worker_id, tag, error)

    async def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop consuming, let the running computation finish, requeue what is held."""
        if self.state is WorkerState.STOPPED:
            return
        self.state = WorkerState.DRAINING
        log.info("worker.stopping worker=%s", self.worker_id)
        if self._heartbeat_task is not None:
            # The loop is asked to end rather than cancelled: cancelling it inside a
            # broker round trip (its queue check) could leave that call waiting.
            self._heartbeats_stopped.set()
            done, _ = await asyncio.wait({self._heartbeat_task}, timeout=_CANCEL_TIMEOUT_S)
            if not done:
                log.warning("worker.heartbeat_stop_timeout worker=%s", self.worker_id)
                self._heartbeat_task.cancel()
        tags = [tag for queues in self._hosted.values() for _, tag in queues]
        if self._assignment_tag is not None:
            tags.append(self._assignment_tag)
        for tag in tags:
            await self._cancel_consumer(tag)
        log.debug("worker.consumers_cancelled worker=%s busy=%d", self.worker_id, self._busy)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("worker.stop_timeout worker=%s timeout_s=%.1f", self.worker_id, timeout_s)
        held = self.jobs.held_deliveries()
        for delivery in held:
            await delivery.requeue()
        self.jobs.clear()
        if self._own_executor:
            self._executor.shutdown(wait=True)
        self.state = WorkerState.STOPPED
        log.info("worker.stopped worker=%s requeued=%d", self.worker_id, len(held))

    async def _beat(self) -> None:
        body = control(
            ControlType.HEARTBEAT,
            worker=self.worker_id,
            partitions=list(self.partitions),
            interval_s=self.heartbeat_s,
            assignable=self.assignable,
            instance=self.instance,
        )
        await self.transport.publish(Outgoing(HEARTBEATS_ROUTING_KEY, body, persistent=False, mandatory=False))

    async def _heartbeat_loop(self) -> None:
        """Publish a heartbeat every `heartbeat_s`, and check that the partition queues exist.

        A deleted queue cancels its consumer on the broker without an error
        reaching aio-pika's robust consumer, so the worker would sit idle for
        ever. Finding the queue gone is fatal instead.
        """
        warned = False
        while not self._heartbeats_stopped.is_set():
            try:
                await self._beat()
                for queue in self.queues:
                    await self.transport.queue_depth(queue)
                warned = False
            except QueueNotFoundError as error:
                self._fail(f"queue deleted while consuming it: {error}")
                return
            except TransportError as error:
                if not warned:
                    log.warning("worker.heartbeat_failed worker=%s error=%s", self.worker_id, error)
                    warned = True
            except Exception as error:  # noqa: BLE001 - without heartbeats the worker looks dead
                self._fail(f"heartbeats stopped: {error!r}")
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._heartbeats_stopped.wait(), self.heartbeat_s)

    def _fail(self, reason: str) -> None:
        log.error("worker.fatal worker=%s reason=%s", self.worker_id, reason)
        self.fatal_reason = reason
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def _handler_for(self, partition: str) -> Any:
        lock = self._partition_locks.setdefault(partition, asyncio.Lock())

        async def handle(delivery: Delivery) -> None:
            self._busy += 1
            self._idle.clear()
            try:
                async with lock:
                    await self._handle(partition, delivery)
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

        return handle

    async def _handle(self, partition: str, delivery: Delivery) -> None:
        self.counters["received"] += 1
        try:
            if is_data_frame(delivery.body):
                await self.jobs.handle_block(partition, delivery)
            else:
                await self.jobs.handle_control(partition, delivery)
        except CodecError as error:
            await self._dead_letter(delivery, str(error.reason), str(error), partition)
        except RejectedBlock as error:
            await self._dead_letter(delivery, str(error.reason), error.detail, partition)
        except TransportError as error:
            # The message is fine; the broker went away while handling it, so it goes
            # back to its queue instead of the dead-letter queue. A computation whose
            # results were lost is redone after the job's rollback.
            log.warning(
                "worker.handler_interrupted worker=%s partition=%s routing_key=%s error=%s",
                self.worker_id, partition, delivery.routing_key, error,
            )
            if not delivery.is_settled:
                with contextlib.suppress(TransportError):
                    await delivery.requeue()
        except Exception as error:  # noqa: BLE001 - a worker must survive any one message
            log.error(
                "worker.handler_failed worker=%s partition=%s error=%r",
                self.worker_id,
                partition,
                error,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            await self._dead_letter(delivery, "handler_error", repr(error), partition)

    async def _dead_letter(self, delivery: Delivery, reason: str, detail: str, partition: str) -> None:
        self.counters["dead_lettered"] += 1
        log.warning(
            "message.rejected worker=%s partition=%s routing_key=%s reason=%s detail=%s",
            self.worker_id,
            partition,
            delivery.routing_key,
            reason,
            detail,
        )
        await delivery.reject(reason, detail)
