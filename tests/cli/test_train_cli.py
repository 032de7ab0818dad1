"""`mpnn train` as a user runs it: the example configs reach their accuracy targets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULT_KEYS = {"train_loss", "test_accuracy", "steps", "wall_time_s", "plan_id", "store_path"}


def train(config: Path, store: Path, *extra: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "mpnn_async", "train", str(config), "--store", str(store), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.parametrize(("config", "target"), [("digits.toml", 0.95), ("mnist.toml", 0.90)])
def test_example_job_reaches_accuracy(config, target, tmp_path):
    completed = train(ROOT / "configs" / config, tmp_path / "store")

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert RESULT_KEYS <= result.keys()
    assert result["test_accuracy"] >= target
    assert result["store_path"] == str(tmp_path / "store")
    assert (tmp_path / "store" / "models").is_dir()


@pytest.mark.rabbitmq
async def test_train_with_broker_starts_worker_processes(tmp_path, broker_url, namespace, transport_factory):
    config = tmp_path / "short.toml"
    text = (ROOT / "configs" / "digits.toml").read_text()
    config.write_text(text.replace("epochs = 12", "epochs = 1\nmax_steps = 20"))
    env = dict(os.environ, MPNN_NAMESPACE=namespace)

    completed = await asyncio.to_thread(
        train, config, tmp_path / "store", "--broker", broker_url, "-v", env=env
    )
    # The run's worker processes declared these queues; declaring them here lets
    # the fixture's transport delete them with the rest of the namespace.
    cleanup = await transport_factory("rabbitmq")
    for partition in ("a", "b", "c"):
        await cleanup.declare_queue(f"part.{partition}", [f"*.part.{partition}"], durable=True)

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["steps"] == 20
    assert completed.stderr.count("worker.spawned") == 3
    # Three workers on this host share its cores.
    share = max(1, len(os.sched_getaffinity(0)) // 3)
    assert completed.stderr.count(f"blas_threads={share}") == 3
    assert "guest:guest" not in completed.stderr
