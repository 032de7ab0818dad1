"""The machine line every benchmark prints: date, CPU model, cores, RAM, load, versions."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

import numpy as np

__all__ = ["listening_pid", "machine_line", "read_proc_status_kib"]


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


def listening_pid(port: int) -> int | None:
    """Return the pid of the process listening on TCP `port` here (such as a broker), or None.

    Reads the socket's inode from /proc/net/tcp and tcp6, then finds the
    process that has it open; other users' processes are visible only to root.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            # 0A is TCP_LISTEN; the local address ends in the port in hex.
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    return None
