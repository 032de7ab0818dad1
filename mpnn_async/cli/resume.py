"""`mpnn resume JOB`: continue an interrupted job from its last checkpoint."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import orjson

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.errors import InvalidInputError
from mpnn_async.runtime.checkpoint import load_checkpoint, load_job_document
from mpnn_async.runtime.job import JobSpec
from mpnn_async.settings import add_runtime_arguments
from mpnn_async.store import Store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "resume",
        help="continue an interrupted job from its last checkpoint",
        description="Read the job's document and last checkpoint from the store and run the rest "
        "of the job here, like `mpnn train` (in-process without a broker, or over the broker's "
        "workers). The final weights equal those of an uninterrupted run.",
    )
    parser.add_argument("job", help="name of the job in the store")
    add_runtime_arguments(parser)
    parser.add_argument("--json", action="store_true", help="end with one JSON line holding the job's result")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    from mpnn_async.runtime.local import run_job_locally

    settings = settings_from_args(args)
    store = Store.open(settings.store)
    document = load_job_document(store, args.job)
    checkpoint = load_checkpoint(store, args.job)
    if document is None or checkpoint is None:
        raise InvalidInputError(f"no job {args.job!r} in store {settings.store}; `mpnn status` lists the jobs")
    if checkpoint.finished:
        print(f"job {args.job} already finished (step {checkpoint.step}); nothing to resume")
        return ExitCode.OK
    job = JobSpec.from_dict(document)
    print(
        f"resuming job {args.job} from step {checkpoint.step} (epoch {checkpoint.epoch + 1}, batch {checkpoint.batch})",
        file=sys.stderr,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = asyncio.run(run_job_locally(job, settings, resume=True))
    if args.json:
        sys.stdout.write(orjson.dumps(result.to_dict()).decode() + "\n")
    else:
        print(f"job {result.job}: finished after {result.steps} steps in all, test accuracy {result.test_accuracy}")
    return ExitCode.OK
