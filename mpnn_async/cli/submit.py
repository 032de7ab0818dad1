"""`mpnn submit JOB`: validate a job file and publish it to the durable job queue."""

from __future__ import annotations

import argparse
import asyncio

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.errors import ConfigError
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.protocol import JOBS_ROUTING_KEY
from mpnn_async.runtime.service import declare_jobs_queue
from mpnn_async.settings import RuntimeSettings, add_runtime_arguments
from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Outgoing


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="publish a job to the job queue",
        description="Validate a job file and publish it as a JSON job message to the durable job "
        "queue, where a `mpnn scheduler` takes it. A bad job is rejected here, naming the field.",
    )
    parser.add_argument("job", help="job file (TOML)")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    job = JobSpec.from_file(args.job)
    settings = settings_from_args(args, args.job)
    if not settings.broker_url:
        raise ConfigError("--broker", "missing", fix="give --broker amqp://... or set MPNN_BROKER_URL")
    asyncio.run(_publish(settings, job))
    print(f"submitted job {job.name}")
    return ExitCode.OK


async def _publish(settings: RuntimeSettings, job: JobSpec) -> None:
    transport = await open_transport(
        settings.broker_url, namespace=settings.namespace, max_message_bytes=settings.max_message_bytes
    )
    try:
        await declare_jobs_queue(transport)
        await transport.publish(Outgoing(JOBS_ROUTING_KEY, job.to_json()))
    finally:
        await transport.close()
