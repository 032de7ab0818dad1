"""Fixtures of the operations tests: the runtime tests' broker and daemons, free ports, `mpnn` runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.conftest import broker, daemons  # noqa: F401  (re-exported fixtures)

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_mpnn(*arguments: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m mpnn_async ARGUMENTS` in the repository root and return its output."""
    environment = dict(os.environ)
    for name in [name for name in environment if name.startswith("MPNN_") and name != "MPNN_TEST_BROKER_URL"]:
        del environment[name]
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mpnn_async", *arguments],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout_s,
        env=environment,
        cwd=ROOT,
    )


@pytest.fixture
def port() -> int:
    return free_port()
