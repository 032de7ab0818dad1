"""The scheduler service: takes jobs from the durable job queue and runs them one at a time."""

from __future__ import annotations

import asyncio
import logging

from mpnn_async.errors import InvalidInputError, MpnnError
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.protocol import JOBS_QUEUE, JOBS_ROUTING_KEY
from mpnn_async.runtime.scheduler import JobRunner
from mpnn_async.settings import RuntimeSettings
from mpnn_async.store import Store
from mpnn_async.transport.base import Delivery, Transport

__all__ = ["SchedulerService", "declare_jobs_queue"]

log = logging.getLogger(__name__)


async def declare_jobs_queue(transport: Transport) -> str:
    return await transport.declare_queue(JOBS_QUEUE, [JOBS_ROUTING_KEY], durable=True)


class SchedulerService:
    """Consumes the job queue with prefetch 1; a job's message is acked when the job ends.

    A job whose message comes back (its scheduler died, or stopped before the
    job ended) resumes from its last checkpoint in the store, because every
    job is run with `resume=True`. An unfinished checkpoint of the same job
    document is continued, and anything else starts afresh.
    """

    def __init__(self, *, transport: Transport, store: Store, settings: RuntimeSettings) -> None:
        self.transport = transport
        self.store = store
        self.settings = settings
        self.jobs_done = 0
        self.current: str | None = None
        self._tag: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"<SchedulerService current={self.current} jobs_done={self.jobs_done}>"

    async def start(self) -> None:
        queue = await declare_jobs_queue(self.transport)
        self._tag = await self.transport.consume(queue, self._on_job, prefetch=1)
        log.info("scheduler.started queue=%s", queue)

    async def stop(self, *, timeout_s: float) -> None:
        """Let the running job finish for up to `timeout_s`, then stop consuming.

        A job still running then is interrupted; its message returns to the
        queue and the next scheduler resumes it from its checkpoint.
        """
        log.info("scheduler.stopping job=%s timeout_s=%.1f", self.current, timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("scheduler.stop_timeout job=%s timeout_s=%.1f interrupted", self.current, timeout_s)
        if self._tag is not None:
            await self.transport.cancel(self._tag)
            self._tag = None
        log.info("scheduler.stopped jobs_done=%d", self.jobs_done)

    async def _on_job(self, delivery: Delivery) -> None:
        try:
            job = JobSpec.from_json(delivery.body)
        except InvalidInputError as error:
            log.warning("job.rejected reason=invalid_job detail=%s", error)
            await delivery.reject("invalid_job", str(error))
            return
        self._idle.clear()
        self.current = job.name
        try:
            runner = JobRunner(
                job=job,
                transport=self.transport,
                store=self.store,
                ready_timeout_s=self.settings.ready_timeout_s,
                step_timeout_s=self.settings.step_timeout_s,
                micro_batch_timeout_s=self.settings.micro_batch_timeout_s,
                max_message_bytes=self.transport.max_body_bytes,
                resume=True,
            )
            result = await runner.run()
            log.info("job.completed job=%s steps=%d accuracy=%s", job.name, result.steps, result.test_accuracy)
            await delivery.ack()
        except MpnnError as error:
            log.error("job.failed job=%s error=%s", job.name, error)
            await delivery.reject("job_failed", str(error))
        finally:
            self.jobs_done += 1
            self.current = None
            self._idle.set()
