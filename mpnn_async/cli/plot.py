"""`mpnn plot JOB`: write a PNG of a job's loss and test accuracy per step."""

from __future__ import annotations

import argparse
import sys

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.cli.observe_args import job_name
from mpnn_async.runtime.history import read_history
from mpnn_async.runtime.progress import read_progress
from mpnn_async.settings import add_runtime_arguments
from mpnn_async.store import Store

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="write a PNG of a job's loss and accuracy",
        description="Read a job's progress history from the store and write a PNG with the train "
        "loss of every step and the test loss and test accuracy of every evaluation. Works while "
        "the job runs, too. Needs matplotlib: pip install 'mpnn-async[plot]'.",
    )
    parser.add_argument("job", type=job_name, help="job name, as in the [job] table")
    add_runtime_arguments(parser, broker=False)
    parser.add_argument(
        "-o", "--output", help="PNG file to write (default: <job>-training.png in the current directory)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    try:
        from mpnn_async.observe.plot import plot_history
    except ImportError as error:
        print(
            f"mpnn plot: matplotlib is not installed ({error}); install the plot extra: "
            "pip install 'mpnn-async[plot]', or pip install -e '.[plot]' in a checkout",
            file=sys.stderr,
        )
        return ExitCode.FAILED

    settings = settings_from_args(args)
    store = Store.open(settings.store, create=False)
    history = read_history(store, args.job)
    if history is None:
        if read_progress(store, args.job) is None:
            problem = "is not in the store; `mpnn status --store DIR` lists the jobs it has"
        else:
            problem = "has progress but no history, so it ran before jobs kept one; run it again"
        print(f"mpnn plot: job {args.job!r} in store {store.root} {problem}", file=sys.stderr)
        return ExitCode.FAILED

    output = args.output or f"{args.job}-training.png"
    try:
        plot_history(history, job=args.job, path=output)
    except OSError as error:
        print(f"mpnn plot: failed to write {output}: {error}", file=sys.stderr)
        return ExitCode.FAILED
    rows = len(history["step"])
    print(f"wrote {output} ({rows} history rows of job {args.job})")
    return ExitCode.OK
