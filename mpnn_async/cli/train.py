"""`mpnn train CONFIG`: run a whole job on this machine."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import orjson

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.cli.observe_args import add_display_arguments
from mpnn_async.observe.display import open_display
from mpnn_async.runtime.job import JobSpec
from mpnn_async.settings import add_runtime_arguments


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run a training job on this machine",
        description="Run a job file end to end. Without a broker every partition runs in this "
        "process on the in-process transport; with --broker (or MPNN_BROKER_URL) the scheduler "
        "runs here and each partition in its own `mpnn worker` process.",
    )
    parser.add_argument("config", help="job file (TOML) with [job], [model], [plan], [optimizer], [dataset]")
    add_runtime_arguments(parser)
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON line holding the job's result"
    )
    add_display_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    from mpnn_async.runtime.local import run_job_locally

    job = JobSpec.from_file(args.config)
    settings = settings_from_args(args, args.config)
    # SIGTERM unwinds like Ctrl-C, so the worker processes this command started are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Progress goes to stderr, so stdout holds only the result.
    with open_display(stream=sys.stderr, plain=args.plain, interval_s=args.interval_s) as display:
        result = asyncio.run(run_job_locally(job, settings, on_progress=display.show))
    if args.json:
        sys.stdout.write(orjson.dumps(result.to_dict()).decode() + "\n")
    else:
        accuracy = "n/a" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
        print(
            f"job {result.job}: {result.steps} steps in {result.wall_time_s:.1f} s, "
            f"train loss {result.train_loss:.4f}, test accuracy {accuracy}; "
            f"weights in {result.store_path} (model {result.model}, plan {result.plan_id})"
        )
    return ExitCode.OK
