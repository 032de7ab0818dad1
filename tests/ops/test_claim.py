"""`python -m mpnn_async.ops.claim`: identical worker containers each claim a different partition."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from mpnn_async.ops.claim import claim_partition
from tests.ops.conftest import ROOT
from tests.runtime.processes import wait_until


def start_claim(store, record, *worker_arguments: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the claim entrypoint; its output (and the exec'd worker's) goes to `<record>.log`."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MPNN_")}
    environment.update(env or {})
    with open(f"{record}.log", "w") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "mpnn_async.ops.claim", "--partitions", "a,b", "--store", str(store),
             "--record", str(record), "--retry-s", "0.1", "--", *worker_arguments],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
            cwd=ROOT,
        )


def output_of(record) -> str:
    with open(f"{record}.log") as log_file:
        return log_file.read()


def test_claims_first_free_partition(tmp_path):
    record = tmp_path / "partition"
    held = claim_partition(tmp_path, ["a"])
    assert held is not None
    try:
        # `--help` makes the exec'd worker print its usage and exit at once.
        process = start_claim(tmp_path, record, "--help")
        process.wait(timeout=30)
    finally:
        os.close(held[1])

    output = output_of(record)
    assert process.returncode == 0, output
    assert record.read_text() == "b\n"
    assert "usage: mpnn worker" in output


def test_spare_waits_for_released_claim(tmp_path):
    record = tmp_path / "partition"
    held = [claim_partition(tmp_path, ["a"]), claim_partition(tmp_path, ["b"])]
    assert None not in held
    process = start_claim(tmp_path, record, "--help")
    try:
        wait_until(lambda: "claim.waiting" in output_of(record), timeout_s=30, what="the spare to wait",
                   details=lambda: output_of(record))
        assert process.poll() is None
        assert not record.exists()
        os.close(held.pop(0)[1])
        process.wait(timeout=30)
    finally:
        for claim in held:
            os.close(claim[1])
        if process.poll() is None:
            process.kill()
            process.wait()

    output = output_of(record)
    assert process.returncode == 0, output
    assert record.read_text() == "a\n"


def test_missing_partitions_exit_3(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "mpnn_async.ops.claim", "--store", str(tmp_path)],
        capture_output=True, check=False, text=True, timeout=30,
        env={name: value for name, value in os.environ.items() if not name.startswith("MPNN_")},
    )

    assert completed.returncode == 3
    assert "MPNN_PARTITIONS" in completed.stderr


@pytest.mark.rabbitmq
async def test_worker_keeps_claim_until_exit(broker, broker_url, namespace, tmp_path):
    record = tmp_path / "partition"
    process = start_claim(tmp_path, record, "-v", env={"MPNN_BROKER_URL": broker_url, "MPNN_NAMESPACE": namespace})
    try:
        await asyncio.to_thread(
            wait_until, lambda: "worker.started" in output_of(record), timeout_s=30, what="the worker to start",
            details=lambda: output_of(record),
        )
        # The worker process (after exec) keeps the lock on `a`.
        assert claim_partition(tmp_path, ["a"]) is None
        assert record.read_text() == "a\n"
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await broker.delete_queue(broker.queue_name("part.a"))

    assert process.returncode == 0, output_of(record)
    released = claim_partition(tmp_path, ["a"])
    assert released is not None
    os.close(released[1])

