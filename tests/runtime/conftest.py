"""Fixtures of the runtime tests: a broker transport and `mpnn` daemons in the test's namespace."""

from __future__ import annotations

import asyncio

import pytest

from mpnn_async.transport import open_transport
from tests.runtime.broker_node import PrivateBroker, find_rabbitmq_scripts
from tests.runtime.processes import Daemons


@pytest.fixture
async def broker(broker_url, namespace):
    transport = await open_transport(broker_url, namespace=namespace, max_message_bytes=1 << 24)
    yield transport
    await transport.purge_namespace()
    await transport.close()


@pytest.fixture
async def daemons(broker, broker_url, namespace, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    started = Daemons(broker_url=broker_url, namespace=namespace, store=store, log_dir=logs)
    yield started
    codes = await asyncio.to_thread(started.stop_all)
    # The daemons declared these queues, so the test's own transport must delete them.
    for name in started.declared_queues():
        await broker.delete_queue(broker.queue_name(name))
    failed = {name: code for name, code in codes.items() if code != 0}
    assert not failed, f"daemons exited non-zero after SIGTERM: {failed}\n" + "\n".join(
        started.log(name) for name in failed
    )


@pytest.fixture
def private_broker(tmp_path_factory):
    """A RabbitMQ node of this test alone, which the test may restart; stopped at teardown."""
    if find_rabbitmq_scripts() is None:
        pytest.skip("needs rabbitmq-server and rabbitmqctl to start a private RabbitMQ node; install rabbitmq-server")
    node = PrivateBroker(tmp_path_factory.mktemp("rabbitmq-node"))
    node.start()
    yield node
    node.stop()
