"""Run `mpnn worker` and record when it computes, for the pipeline benchmarks.

Usage: python bench/busy_worker.py INTERVALS.json worker --partition a [worker options]

Wraps the two methods that the worker runs in its compute threads:
`Worker._compute` (the forward or backward of one gathered block, with the
encoding of what it sends) and `Worker._apply_and_persist` (the optimizer
step). Every call is written to INTERVALS.json as `[kind, start_s, end_s]`
on the `time.monotonic()` clock when the worker exits. On Linux
that clock is CLOCK_MONOTONIC, which all processes share, so the intervals
compare with times taken in the benchmark's process.
"""

from __future__ import annotations

import atexit
import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpnn_async.cli.main import main
from mpnn_async.runtime.worker import Worker

intervals: list[tuple[str, float, float]] = []


def timed(kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return method(*args, **kwargs)
        finally:
            intervals.append((kind, started, time.monotonic()))

    return wrapper


def write_intervals(path: Path) -> None:
    path.write_bytes(orjson.dumps(intervals))


if __name__ == "__main__":
    output = Path(sys.argv[1])
    # Raises AttributeError at once, not an empty file later, if these methods are renamed.
    Worker._compute = timed("compute", Worker._compute)  # type: ignore[method-assign]
    Worker._apply_and_persist = timed("apply", Worker._apply_and_persist)  # type: ignore[method-assign]
    atexit.register(write_intervals, output)
    sys.exit(main(sys.argv[2:]))
