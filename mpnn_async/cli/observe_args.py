"""Flags and argument types shared by the commands that observe jobs (`mpnn train`, `watch`, `plot`)."""

from __future__ import annotations

import argparse
import math
import re

from mpnn_async.observe.display import DEFAULT_INTERVAL_S

__all__ = ["add_display_arguments", "job_name", "positive_seconds"]

# The pattern of `[job] name`: one word of a routing key, so no dots.
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def add_display_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags that choose between the live bar and plain lines."""
    parser.add_argument(
        "--plain", action="store_true", help="print key=value lines even when the output is a terminal"
    )
    parser.add_argument(
        "--interval",
        dest="interval_s",
        type=positive_seconds,
        default=DEFAULT_INTERVAL_S,
        help="seconds of job time between two step lines in plain output; every evaluation gets a "
        f"line of its own (default {DEFAULT_INTERVAL_S:g})",
    )


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: give a number of seconds > 0")
    return seconds


def job_name(value: str) -> str:
    if not _JOB_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid job name {value!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return value
