"""Sample this process's RSS and what its threads run, when MPNN_RSS_TRACE names an output file.

Put this directory on PYTHONPATH of a process (such as an `mpnn worker`
started by `bench/train_step.py --worker-env PYTHONPATH=bench/rss_trace
--worker-env MPNN_RSS_TRACE=/tmp/trace-{pid}.txt`; `{pid}` becomes the
process id), and Python imports this module at
startup. A daemon thread then reads /proc/self/statm every
MPNN_RSS_TRACE_INTERVAL_MS milliseconds (default 2) and notes, for each
thread, the innermost frame in `mpnn_async` and the innermost frame overall.
At exit it writes, for each such location, the highest RSS seen while a
thread was in it, highest first, and the RSS over time in 1 MiB steps.

A sample shows where threads were when RSS was read, not which line
allocated the memory. A peak inside a NumPy call is attributed to the
project function that called it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as file:
        return int(file.read().split()[1]) * _PAGE_BYTES


def _locations(sampler_id: int) -> list[str]:
    locations = []
    for thread_id, frame in sys._current_frames().items():
        if thread_id == sampler_id:
            continue
        innermost = f"{frame.f_code.co_name}"
        project = None
        while frame is not None:
            if "mpnn_async" in frame.f_code.co_filename and project is None:
                name = frame.f_code.co_filename.rsplit("mpnn_async/", 1)[-1]
                project = f"{name}:{frame.f_code.co_name}"
            frame = frame.f_back
        if project is not None:
            locations.append(f"{project} > {innermost}")
    return locations


def _run(output: str, interval_s: float) -> None:
    sampler_id = threading.get_ident()
    peaks: dict[str, int] = {}
    timeline: list[tuple[float, int]] = []
    started = time.monotonic()
    last = 0

    def write() -> None:
        with open(output, "w") as file:
            file.write(f"pid {os.getpid()} {' '.join(sys.argv)}\n")
            file.write(f"samples every {interval_s * 1000:.1f} ms\n")
            file.write("highest RSS (MiB) seen while a thread was at each location:\n")
            for location, rss in sorted(peaks.items(), key=lambda item: -item[1])[:40]:
                file.write(f"  {rss / 2**20:9.1f}  {location}\n")
            file.write("RSS over time (s, MiB), on every change of 1 MiB or more:\n")
            for seconds, rss in timeline:
                file.write(f"  {seconds:9.3f} {rss / 2**20:9.1f}\n")

    atexit.register(write)
    while True:
        rss = _rss_bytes()
        for location in _locations(sampler_id):
            if rss > peaks.get(location, 0):
                peaks[location] = rss
        if abs(rss - last) >= 1 << 20:
            timeline.append((time.monotonic() - started, rss))
            last = rss
        time.sleep(interval_s)


if os.environ.get("MPNN_RSS_TRACE"):
    interval_s = float(os.environ.get("MPNN_RSS_TRACE_INTERVAL_MS", "2")) / 1000
    output = os.environ["MPNN_RSS_TRACE"].replace("{pid}", str(os.getpid()))
    threading.Thread(target=_run, args=(output, interval_s), name="rss-trace", daemon=True).start()
