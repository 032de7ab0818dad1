"""Run a whole job from one command: `mpnn train`.

Without a broker, the scheduler and one worker hosting every partition share
one process and one in-process transport (the embedded mode). With a broker,
the scheduler runs here and each partition gets a worker process of its own,
started as `mpnn worker` and stopped with SIGTERM when the job ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import Callable, Iterator

from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.progress import ProgressEvent
from mpnn_async.runtime.scheduler import JobResult, JobRunner
from mpnn_async.runtime.worker import Worker
from mpnn_async.settings import RuntimeSettings
from mpnn_async.store import Store
from mpnn_async.transport import open_transport

__all__ = ["run_job_locally"]

log = logging.getLogger(__name__)


async def run_job_locally(
    job: JobSpec,
    settings: RuntimeSettings,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    resume: bool = False,
) -> JobResult:
    """Run `job` here; with `resume`, continue it from its last checkpoint in the store."""
    store = Store.open(settings.store, create=True)
    transport = await open_transport(
        None if _is_in_process(settings.broker_url) else settings.broker_url,
        namespace=settings.namespace,
        max_message_bytes=settings.max_message_bytes,
    )
    plan = job.build_plan()
    try:
        runner = JobRunner(
            job=job,
            transport=transport,
            store=store,
            ready_timeout_s=settings.ready_timeout_s,
            # Blocks over the broker's limit arrive reassembled from chunks, so decode up to the body limit.
            max_message_bytes=transport.max_body_bytes,
            on_progress=on_progress,
            resume=resume,
        )
        if _is_in_process(settings.broker_url):
            worker = Worker(
                transport=transport,
                store=store,
                partitions=plan.partitions,
                worker_id="embedded",
                prefetch=settings.prefetch,
                max_message_bytes=transport.max_body_bytes,
            )
            await worker.start()
            try:
                return await runner.run()
            finally:
                await worker.stop(timeout_s=settings.shutdown_timeout_s)
        with _worker_processes(plan.partitions, settings):
            return await runner.run()
    finally:
        await transport.close()


def _is_in_process(broker_url: str) -> bool:
    return not broker_url or broker_url.startswith("memory:")


def _blas_share(workers: int) -> int:
    """Return this host's cores divided among `workers` processes, at least 1.

    With the library's default of one BLAS thread per core, the workers together
    would run `workers` times more threads than cores.
    """
    return max(1, len(os.sched_getaffinity(0)) // workers)


@contextlib.contextmanager
def _worker_processes(partitions: tuple[str, ...], settings: RuntimeSettings) -> Iterator[None]:
    environment = dict(os.environ)
    # The URL travels in the environment, not the command line, so `ps` never shows a password.
    environment["MPNN_BROKER_URL"] = settings.broker_url
    processes = []
    blas_threads = settings.blas_threads
    if blas_threads is None:
        blas_threads = _blas_share(len(partitions))
    for partition in partitions:
        command = [
            sys.executable, "-m", "mpnn_async", "worker",
            "--partition", partition,
            "--store", settings.store,
            "--namespace", settings.namespace,
            "--max-message-bytes", str(settings.max_message_bytes),
            "--blas-threads", str(blas_threads),
        ]
        processes.append(subprocess.Popen(command, env=environment))
        log.info(
            "worker.spawned partition=%s pid=%d blas_threads=%d", partition, processes[-1].pid, blas_threads
        )
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=settings.shutdown_timeout_s + 5)
            except subprocess.TimeoutExpired:
                log.warning("worker.kill pid=%d reason=no exit after SIGTERM", process.pid)
                process.kill()
                process.wait()
