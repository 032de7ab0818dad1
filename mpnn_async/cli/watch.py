"""`mpnn watch JOB`: show a job's progress until it finishes."""

from __future__ import annotations

import argparse
import asyncio
import sys

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.cli.observe_args import add_display_arguments, job_name, positive_seconds
from mpnn_async.observe.display import ProgressDisplay, open_display
from mpnn_async.runtime.progress import ProgressEvent
from mpnn_async.observe.events import FAILED, FINISHED
from mpnn_async.observe.sources import BrokerProgressSource, StoreProgressSource
from mpnn_async.observe.watch import JobNotFoundError, follow_job
from mpnn_async.runtime.progress import read_progress
from mpnn_async.settings import RuntimeSettings, add_runtime_arguments
from mpnn_async.store import Store, StoreError
from mpnn_async.transport import open_transport

__all__ = ["register"]

DEFAULT_TIMEOUT_S = 30.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="show a job's progress until it finishes",
        description="Show a live progress bar of a job (key=value lines when the output is not a "
        "terminal) until it finishes (exit 0) or fails (exit 1). With a broker (--broker or MPNN_BROKER_URL) it "
        "receives the job's progress events on a queue of its own; without one it polls the latest "
        "progress record in the store once a second.",
    )
    parser.add_argument("job", type=job_name, help="job name, as in the [job] table")
    add_runtime_arguments(parser)
    parser.add_argument(
        "--timeout",
        dest="timeout_s",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help="fail after this many seconds without an event if the store has no record of the job "
        f"(default {DEFAULT_TIMEOUT_S:g})",
    )
    add_display_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    settings = settings_from_args(args)
    with open_display(stream=sys.stdout, plain=args.plain, interval_s=args.interval_s) as display:
        try:
            last = asyncio.run(_watch(args.job, settings, display, timeout_s=args.timeout_s))
        except JobNotFoundError as error:
            print(f"mpnn watch: {error}", file=sys.stderr)
            return ExitCode.FAILED
    if last.state == FAILED:
        print(f"mpnn watch: job {args.job} failed at step {last.step}; the scheduler's log has the error", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


async def _watch(
    job: str, settings: RuntimeSettings, display: ProgressDisplay, *, timeout_s: float
) -> ProgressEvent:
    if not settings.broker_url:
        store = Store.open(settings.store, create=False)

        def unknown_in_store() -> None:
            raise JobNotFoundError(
                f"job {job!r} not found: the store {store.root} has no progress record of it after "
                f"{timeout_s:g} s; check the job name and --store, or give --broker to wait for events"
            )

        return await follow_job(
            StoreProgressSource(store=store, job=job), display, timeout_s=timeout_s, on_silence=unknown_in_store
        )

    transport = await open_transport(
        settings.broker_url, namespace=settings.namespace, max_message_bytes=settings.max_message_bytes
    )
    try:
        source = BrokerProgressSource(transport=transport, job=job)
        queue = await source.start()
        print(f"job.watching job={job} queue={queue}", file=sys.stderr, flush=True)
        try:
            return await follow_job(
                source,
                display,
                timeout_s=timeout_s,
                on_silence=lambda: _report_silence(job, settings, timeout_s=timeout_s),
            )
        finally:
            await source.close()
    finally:
        await transport.close()


def _report_silence(job: str, settings: RuntimeSettings, *, timeout_s: float) -> None:
    """Raise JobNotFoundError if the store has no record of `job`, else print what the store last recorded."""
    try:
        record = read_progress(Store.open(settings.store, create=False), job)
        store_problem = ""
    except StoreError as error:
        record = None
        store_problem = f" ({error})"
    if record is None:
        raise JobNotFoundError(
            f"job {job!r} not found: no progress event on exchange {settings.namespace}.data within "
            f"{timeout_s:g} s and no record in the store {settings.store}{store_problem}; check the job "
            "name, --namespace and --store, or start the job"
        )
    if record.get("state") == FINISHED:
        last = f"its last run finished at step {record.get('step')}"
    else:
        last = (
            f"its last record is step {record.get('step')}/{record.get('total_steps')} with state "
            f"{record.get('state')!r} (a scheduler that stopped leaves it so)"
        )
    print(
        f"mpnn watch: no progress event of job {job!r} within {timeout_s:g} s; {last} in the store "
        f"{settings.store}; waiting for events (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
