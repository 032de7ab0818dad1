"""`mpnn watch` over the real RabbitMQ broker, following a job that `mpnn train --broker` runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from mpnn_async.transport.base import QueueNotFoundError
from tests.observe.jobs import ROOT, SHORT_JOB_STEPS, short_digits_config

pytestmark = pytest.mark.rabbitmq


async def test_watch_receives_events_of_running_job(tmp_path, broker_url, namespace, transport_factory):
    env = dict(os.environ, MPNN_NAMESPACE=namespace, MPNN_BROKER_URL=broker_url)
    config = short_digits_config(tmp_path)
    store = tmp_path / "store"
    cleanup = await transport_factory("rabbitmq")
    watch = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mpnn_async", "watch", "digits", "--timeout", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )
    try:
        # The watcher binds its queue before it prints this line; earlier events would be lost.
        started = (await asyncio.wait_for(watch.stderr.readline(), timeout=30)).decode()
        assert started.startswith("job.watching job=digits queue="), started
        queue = started.split("queue=")[1].strip()
        assert queue.startswith(f"{namespace}.watch.digits.")

        trained = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mpnn_async", "train", str(config), "--store", str(store), "--json"],
            capture_output=True, text=True, timeout=180, env=env, cwd=ROOT,
        )
        stdout, stderr = await asyncio.wait_for(watch.communicate(), timeout=60)
    finally:
        if watch.returncode is None:
            watch.kill()
            await watch.wait()
        # The train run's worker processes declared these queues; declaring them here lets
        # the fixture's transport delete them with the rest of the namespace.
        for partition in ("a", "b", "c"):
            await cleanup.declare_queue(f"part.{partition}", [f"*.part.{partition}"], durable=True)

    assert trained.returncode == 0, trained.stderr[-3000:]
    assert watch.returncode == 0, stderr.decode()[-3000:]
    lines = stdout.decode().splitlines()
    evaluated = [line for line in lines if line.startswith("job.evaluated")]
    assert [line.split()[3] for line in evaluated] == ["step=45/60", f"step={SHORT_JOB_STEPS}/60"]
    assert lines[0].startswith("job.progress job=digits epoch=1 step=1/60 ")
    assert lines[-1].startswith(f"job.finished job=digits epoch=2 step={SHORT_JOB_STEPS}/60 ")
    # Exclusive and auto-delete, and deleted by the watcher itself on exit.
    with pytest.raises(QueueNotFoundError):
        await cleanup.queue_depth(queue)
