"""`follow_job` on the broker source, over the in-process transport."""

from __future__ import annotations

import asyncio
import dataclasses
import io

import pytest

from mpnn_async.observe.display import PlainProgressDisplay
from mpnn_async.observe.sources import BrokerProgressSource
from mpnn_async.observe.watch import JobNotFoundError, follow_job
from mpnn_async.transport.base import REJECT_REASON_HEADER, Outgoing, QueueNotFoundError
from mpnn_async.wire import encode_control
from tests.observe.events import JOB, job_events


def progress_message(event, routing_key=f"{JOB}.progress"):
    body = encode_control("job.progress", event.to_dict())
    return Outgoing(routing_key, body, persistent=False, mandatory=False)


async def test_follow_job_until_finished(transport_factory):
    watcher = await transport_factory("memory")
    scheduler = await transport_factory("memory")
    source = BrokerProgressSource(transport=watcher, job=JOB)
    queue = await source.start()
    stream = io.StringIO()
    events = job_events()

    async def publish():
        # Another job's event must not reach this watcher's queue.
        other = dataclasses.replace(events[0], job="other")
        await scheduler.publish(progress_message(other, routing_key="other.progress"))
        for event in events:
            await scheduler.publish(progress_message(event))

    publishing = asyncio.create_task(publish())
    final = await asyncio.wait_for(
        follow_job(source, PlainProgressDisplay(stream=stream), timeout_s=5, on_silence=pytest.fail), timeout=10
    )
    await publishing
    await source.close()

    assert final == events[-1]
    assert "rejected=0" in repr(source)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith(f"job.finished job={JOB} epoch=2 step=8/8")
    assert sum(line.startswith("job.evaluated") for line in lines) == 2
    with pytest.raises(QueueNotFoundError):
        await watcher.queue_depth(queue)


async def test_malformed_event_dead_lettered(transport_factory):
    watcher = await transport_factory("memory")
    scheduler = await transport_factory("memory")
    source = BrokerProgressSource(transport=watcher, job=JOB)
    await source.start()
    dead = asyncio.Queue()

    async def on_dead(delivery):
        await dead.put(dict(delivery.headers))
        await delivery.ack()

    await watcher.consume(watcher.dead_letter_queue, on_dead, prefetch=10)
    bad = job_events()[0].to_dict() | {"step": "seven"}
    await scheduler.publish(Outgoing(f"{JOB}.progress", encode_control("job.progress", bad), mandatory=False))
    await scheduler.publish(progress_message(job_events()[-1]))

    final = await follow_job(source, PlainProgressDisplay(stream=io.StringIO()), timeout_s=5, on_silence=pytest.fail)
    headers = await asyncio.wait_for(dead.get(), timeout=5)
    await source.close()

    assert final.state == "finished"
    assert headers[REJECT_REASON_HEADER] == "invalid_field"
    assert "rejected=1" in repr(source)


async def test_silence_reported_once(transport_factory):
    watcher = await transport_factory("memory")
    source = BrokerProgressSource(transport=watcher, job=JOB)
    await source.start()

    def unknown():
        raise JobNotFoundError("job 'demo' not found")

    with pytest.raises(JobNotFoundError):
        await follow_job(source, PlainProgressDisplay(stream=io.StringIO()), timeout_s=0.2, on_silence=unknown)
    await source.close()


async def test_follow_job_stops_at_failure(transport_factory):
    watcher = await transport_factory("memory")
    scheduler = await transport_factory("memory")
    source = BrokerProgressSource(transport=watcher, job=JOB)
    await source.start()
    stream = io.StringIO()
    first = job_events()[0]
    failed = dataclasses.replace(first, state="failed")

    await scheduler.publish(progress_message(first))
    await scheduler.publish(progress_message(failed))
    final = await asyncio.wait_for(
        follow_job(source, PlainProgressDisplay(stream=stream), timeout_s=5, on_silence=pytest.fail), timeout=10
    )
    await source.close()

    assert final.state == "failed"
    assert stream.getvalue().splitlines()[-1].startswith(f"job.failed job={JOB}")
