"""The machine line every benchmark prints: date, CPU model, cores, RAM, load, versions."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

import numpy as np

__all__ = ["machine_line", "read_proc_status_kib"]


def _cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or platform.machine()


def _ram_gib() -> float:
    match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return int(match.group(1)) / (1 << 20) if match else float("nan")


def machine_line() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"machine: {now}, {_cpu_model()}, {os.cpu_count()} cores, {_ram_gib():.0f} GiB RAM, "
        f"load average {load}, Python {platform.python_version()}, NumPy {np.__version__}"
    )


def read_proc_status_kib(pid: int, field: str) -> int:
    """Return a `kB` field (such as VmHWM or VmRSS) of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {field}")
