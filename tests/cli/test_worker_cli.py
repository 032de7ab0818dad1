"""`mpnn worker --blas-threads` as a real process: the limit threadpoolctl reads back, and bad values."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from mpnn_async.cli.exit_codes import ExitCode
from tests.ops.conftest import run_mpnn
from tests.runtime.processes import wait_until

BLAS_LINE = re.compile(r"blas\.threads library=\S+ version=\S+ threads=(\d+) requested=(\S+)")


async def blas_lines(daemons, name: str) -> list[tuple[str, str]]:
    """Wait for the worker's `blas.threads` log lines; return (threads, requested) of each."""
    await asyncio.to_thread(
        wait_until,
        lambda: "worker.started" in daemons.log(name),
        timeout_s=60,
        what=f"{name} to log worker.started",
        details=lambda: daemons.log(name),
    )
    return BLAS_LINE.findall(daemons.log(name))


@pytest.mark.rabbitmq
async def test_flag_sets_blas_threads(daemons, monkeypatch):
    # The flag wins over the environment variable.
    monkeypatch.setenv("MPNN_BLAS_THREADS", "3")
    daemons.worker("a", "--blas-threads", "1")

    lines = await blas_lines(daemons, "worker-a")

    assert lines, daemons.log("worker-a")
    assert all(threads == "1" for threads, _ in lines), lines
    assert all(requested == "1" for _, requested in lines), lines


@pytest.mark.rabbitmq
async def test_environment_beats_config_file(daemons, monkeypatch, tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text("[runtime]\nblas_threads = 2\n")
    monkeypatch.setenv("MPNN_BLAS_THREADS", "3")
    daemons.worker("b", "--config", str(config))

    lines = await blas_lines(daemons, "worker-b")

    assert lines, daemons.log("worker-b")
    assert all(threads == "3" for threads, _ in lines), lines


@pytest.mark.rabbitmq
async def test_config_file_sets_blas_threads(daemons, tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text("[runtime]\nblas_threads = 3\n")
    daemons.worker("c", "--config", str(config))

    lines = await blas_lines(daemons, "worker-c")

    assert lines, daemons.log("worker-c")
    assert all(threads == "3" for threads, _ in lines), lines


@pytest.mark.rabbitmq
async def test_unset_blas_threads_is_one(daemons, monkeypatch):
    monkeypatch.delenv("MPNN_BLAS_THREADS", raising=False)
    daemons.worker("d")

    lines = await blas_lines(daemons, "worker-d")

    assert lines, daemons.log("worker-d")
    assert all(threads == "1" for threads, _ in lines), lines


@pytest.mark.rabbitmq
async def test_zero_keeps_library_default(daemons, monkeypatch):
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    daemons.worker("e", "--blas-threads", "0")

    lines = await blas_lines(daemons, "worker-e")

    assert lines, daemons.log("worker-e")
    # Without those variables, the OpenBLAS of the NumPy wheels starts one thread per core.
    assert all(threads == str(len(os.sched_getaffinity(0))) for threads, _ in lines), lines
    assert all(requested == "library-default" for _, requested in lines), lines


@pytest.mark.parametrize(
    ("arguments", "env", "config", "field"),
    [
        (["--blas-threads", "-1"], {}, None, "--blas-threads"),
        ([], {"MPNN_BLAS_THREADS": "two"}, None, "MPNN_BLAS_THREADS"),
        ([], {}, "[runtime]\nblas_threads = -2\n", "runtime.blas_threads"),
    ],
    ids=["flag", "environment", "config-file"],
)
def test_bad_blas_threads_names_field(arguments, env, config, field, tmp_path):
    if config is not None:
        path = tmp_path / "worker.toml"
        path.write_text(config)
        arguments = [*arguments, "--config", str(path)]
    # The settings are checked before the worker connects, so no broker is needed.
    env = {"MPNN_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/", "MPNN_STORE": str(tmp_path), **env}

    completed = run_mpnn("worker", "--partition", "a", *arguments, env=env)

    assert completed.returncode == ExitCode.CONFIG_ERROR, completed.stderr
    assert f"{field}: invalid value" in completed.stderr
    assert "give a number of threads, or 0 for the BLAS library's default" in completed.stderr
