"""`mpnn replan JOB PLAN_FILE`: move a running job's neurons to another plan at the next step boundary."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.config import load_toml, require_table
from mpnn_async.errors import ConfigError, InvalidInputError
from mpnn_async.planning import build_plan
from mpnn_async.runtime.checkpoint import load_job_document
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.protocol import ControlType, control, scheduler_routing_key
from mpnn_async.settings import RuntimeSettings, add_runtime_arguments
from mpnn_async.store import Store
from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Outgoing, UnroutableError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replan",
        help="change a running job's partitions at the next step boundary",
        description="Send the [plan] table of PLAN_FILE to the scheduler running JOB. At the next "
        "step boundary the scheduler persists every partition, re-cuts the weights and optimizer "
        "state into the new plan, and continues; the numbers do not change.",
    )
    parser.add_argument("job", help="name of the running job")
    parser.add_argument("plan_file", help="TOML file with a [plan] table for the job's model")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    settings = settings_from_args(args)
    if not settings.broker_url:
        raise ConfigError("--broker", "missing", fix="give --broker amqp://... or set MPNN_BROKER_URL")
    document = load_job_document(Store.open(settings.store), args.job)
    if document is None:
        raise InvalidInputError(f"no job {args.job!r} in store {settings.store}; `mpnn status` lists the jobs")
    table = dict(require_table(load_toml(args.plan_file), "plan", fix="add a [plan] table"))
    # Checked here, so a plan that does not fit the model fails now and not inside the scheduler.
    plan = build_plan(JobSpec.from_dict(document).model, table)
    asyncio.run(_send(settings, args.job, table))
    print(f"sent plan {plan.plan_id} ({', '.join(plan.partitions)}) to job {args.job}")
    return ExitCode.OK


async def _send(settings: RuntimeSettings, job: str, table: dict[str, Any]) -> None:
    transport = await open_transport(
        settings.broker_url, namespace=settings.namespace, max_message_bytes=settings.max_message_bytes
    )
    try:
        body = control(ControlType.JOB_REPLAN, job=job, plan=table)
        await transport.publish(Outgoing(scheduler_routing_key(job), body))
    except UnroutableError:
        raise InvalidInputError(
            f"job {job!r} is not running: no scheduler listens for it on namespace {settings.namespace!r}; "
            "a plan can only change while the job runs (submit it again with the new plan otherwise)"
        ) from None
    finally:
        await transport.close()
