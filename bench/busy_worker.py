"""Run `mpnn worker` and record when it computes, for the pipeline benchmarks.

Usage: python bench/busy_worker.py INTERVALS.json worker --partition a [worker options]

A worker runs all its numeric work in one thread pool, whose threads are
named `mpnn-compute`: the forward or backward of each gathered block (with
the encoding of what it sends), the optimizer step, and loading a job's
weights. This wraps every call submitted to that pool and writes it to
INTERVALS.json as `[kind, start_s, end_s]` when the worker exits. The kind
is "apply" for the optimizer step (a function whose name contains
"apply"), else "compute". Times are on the `time.monotonic()` clock, which
on Linux is CLOCK_MONOTONIC, shared by all processes, so the intervals
compare with times taken in the benchmark's process.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpnn_async.cli.main import main

COMPUTE_THREAD_PREFIX = "mpnn-compute"

intervals: list[tuple[str, float, float]] = []
submit = concurrent.futures.ThreadPoolExecutor.submit


def timed_submit(
    executor: concurrent.futures.ThreadPoolExecutor, function: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> concurrent.futures.Future[Any]:
    if not executor._thread_name_prefix.startswith(COMPUTE_THREAD_PREFIX):
        return submit(executor, function, *args, **kwargs)
    kind = "apply" if "apply" in getattr(function, "__name__", "") else "compute"

    def timed_call() -> Any:
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            intervals.append((kind, started, time.monotonic()))

    return submit(executor, timed_call)


def write_intervals(path: Path) -> None:
    path.write_bytes(orjson.dumps(intervals))


if __name__ == "__main__":
    output = Path(sys.argv[1])
    concurrent.futures.ThreadPoolExecutor.submit = timed_submit  # type: ignore[method-assign]
    atexit.register(write_intervals, output)
    sys.exit(main(sys.argv[2:]))
