"""`mpnn worker --check` and `mpnn scheduler --check` as real processes: exit codes and the status line."""

from __future__ import annotations

import asyncio

import pytest

from mpnn_async.ops.health import check_store
from mpnn_async.transport import redact_url
from mpnn_async.transport.base import Outgoing
from tests.ops.conftest import free_port, run_mpnn


def check(command: str, *arguments: str, broker_url: str, namespace: str, store: str):
    env = {"MPNN_BROKER_URL": broker_url, "MPNN_NAMESPACE": namespace, "MPNN_STORE": store}
    return asyncio.to_thread(run_mpnn, command, *arguments, "--check", env=env, timeout_s=60)


@pytest.mark.rabbitmq
async def test_worker_check_healthy(broker, broker_url, namespace, tmp_path):
    # A message waits in the partition's queue; the check must leave it there.
    queue = await broker.declare_queue("part.a", ["*.part.a"], durable=True)
    await broker.publish(Outgoing("job1.part.a", b'{"type": "job.end", "job": "job1"}'))
    try:
        completed = await check("worker", "--partition", "a", broker_url=broker_url, namespace=namespace,
                                store=str(tmp_path))

        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert completed.stdout.count("\n") == 1
        assert completed.stdout.startswith("mpnn worker --check: healthy:")
        assert f"queue {queue} has 1 ready" in completed.stdout
        assert await broker.queue_depth(queue) == 1
        assert list(tmp_path.iterdir()) == []
    finally:
        await broker.delete_queue(queue)


@pytest.mark.rabbitmq
async def test_worker_check_declares_missing_queue(broker, broker_url, namespace, tmp_path):
    completed = await check("worker", "--partition", "b", broker_url=broker_url, namespace=namespace,
                            store=str(tmp_path))
    queue = broker.queue_name("part.b")
    try:
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert f"queue {queue} declared" in completed.stdout
        assert await broker.queue_depth(queue) == 0
    finally:
        await broker.delete_queue(queue)


@pytest.mark.rabbitmq
async def test_scheduler_check_healthy(broker, broker_url, namespace, tmp_path):
    completed = await check("scheduler", broker_url=broker_url, namespace=namespace, store=str(tmp_path))
    try:
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert completed.stdout.startswith("mpnn scheduler --check: healthy:")
        assert broker.queue_name("jobs") in completed.stdout
    finally:
        await broker.delete_queue(broker.queue_name("jobs"))


async def test_unreachable_broker_exits_4(namespace, tmp_path):
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"

    completed = await check("worker", "--partition", "a", broker_url=url, namespace=namespace, store=str(tmp_path))

    assert completed.returncode == 4, completed.stdout + completed.stderr
    assert completed.stdout.startswith("mpnn worker --check: unhealthy:")
    assert "unreachable" in completed.stdout
    assert "store" in completed.stdout


@pytest.mark.rabbitmq
async def test_missing_store_exits_5(broker, broker_url, namespace, tmp_path):
    missing = tmp_path / "not-mounted"

    completed = await check("worker", "--partition", "c", broker_url=broker_url, namespace=namespace,
                            store=str(missing))
    try:
        assert completed.returncode == 5, completed.stdout + completed.stderr
        assert "unhealthy" in completed.stdout
        assert f"store root {missing} does not exist" in completed.stdout
    finally:
        await broker.delete_queue(broker.queue_name("part.c"))


@pytest.mark.rabbitmq
async def test_store_file_not_directory_exits_5(broker, broker_url, namespace, tmp_path):
    not_directory = tmp_path / "file"
    not_directory.write_text("x")

    completed = await check("scheduler", broker_url=broker_url, namespace=namespace, store=str(not_directory))
    try:
        assert completed.returncode == 5, completed.stdout + completed.stderr
        assert "is not a directory" in completed.stdout
    finally:
        await broker.delete_queue(broker.queue_name("jobs"))


@pytest.mark.rabbitmq
async def test_queue_with_other_properties_exits_3(broker, broker_url, namespace, tmp_path):
    # A non-durable queue of the worker's name: the worker could not declare it.
    queue = await broker.declare_queue("part.d", ["*.part.d"], durable=False)
    try:
        completed = await check("worker", "--partition", "d", broker_url=broker_url, namespace=namespace,
                                store=str(tmp_path))

        assert completed.returncode == 3, completed.stdout + completed.stderr
        assert "unhealthy" in completed.stdout
    finally:
        await broker.delete_queue(queue)


@pytest.mark.parametrize("make", ["missing", "file"])
def test_check_store_failures(tmp_path, make):
    root = tmp_path / "root"
    if make == "file":
        root.write_text("x")

    result = check_store(str(root), timeout_s=5)

    assert not result.passed
    assert result.exit_code == 5
    assert str(root) in result.detail


def test_redact_url_keeps_tls_query():
    url = "amqps://mpnn:hunter2@rabbit.internal:5671/prod?cafile=/etc/mpnn/ca.pem&certfile=/etc/mpnn/c.pem"

    assert redact_url(url) == "amqps://mpnn:***@rabbit.internal:5671/prod?cafile=/etc/mpnn/ca.pem&certfile=/etc/mpnn/c.pem"


async def test_amqps_cafile_reaches_tls_setup(namespace, tmp_path):
    # The client builds its TLS context from `cafile` before it opens the socket.
    url = f"amqps://mpnn:hunter2@127.0.0.1:{free_port()}/prod?cafile={tmp_path}/missing-ca.pem"

    completed = await check("worker", "--partition", "a", broker_url=url, namespace=namespace, store=str(tmp_path))

    assert completed.returncode == 4, completed.stdout + completed.stderr
    assert "FileNotFoundError" in completed.stdout
    assert "amqps://mpnn:***@127.0.0.1" in completed.stdout
    assert "hunter2" not in completed.stdout + completed.stderr
