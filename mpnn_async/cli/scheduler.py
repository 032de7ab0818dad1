"""`mpnn scheduler`: the daemon that runs jobs from the job queue."""

from __future__ import annotations

import argparse
import asyncio

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.errors import ConfigError
from mpnn_async.ops.health import add_check_argument, run_health_check, scheduler_queues
from mpnn_async.ops.metrics import MetricsExporter, MetricsOptions, add_metrics_arguments
from mpnn_async.runtime.daemon import install_stop_signals
from mpnn_async.runtime.protocol import JOBS_QUEUE
from mpnn_async.runtime.service import SchedulerService
from mpnn_async.settings import RuntimeSettings, add_runtime_arguments
from mpnn_async.store import Store
from mpnn_async.transport import open_transport


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "scheduler",
        help="run the scheduler daemon",
        description="Take jobs published by `mpnn submit` from the durable job queue and run them "
        "over the workers, one at a time. Stops cleanly on SIGTERM.",
    )
    add_runtime_arguments(parser)
    parser.add_argument("--config", help="TOML file whose [runtime] table gives defaults")
    parser.add_argument(
        "--shutdown-timeout",
        dest="shutdown_timeout_s",
        type=float,
        help="seconds to let the running job finish after SIGTERM (default 30)",
    )
    parser.add_argument(
        "--micro-batch-timeout",
        dest="micro_batch_timeout_s",
        type=float,
        help="seconds one micro-batch attempt may take before it is retried on another route "
        "(env MPNN_MICRO_BATCH_TIMEOUT_S, default 120)",
    )
    parser.add_argument(
        "--step-timeout",
        dest="step_timeout_s",
        type=float,
        help="seconds for every replica to apply a step before the job rolls back "
        "(env MPNN_STEP_TIMEOUT_S, default 600)",
    )
    add_check_argument(parser)
    add_metrics_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    settings = settings_from_args(args, args.config)
    if not settings.broker_url:
        raise ConfigError("--broker", "missing", fix="give --broker amqp://... or set MPNN_BROKER_URL")
    if args.check:
        return run_health_check(settings, command="scheduler", queues=scheduler_queues())
    asyncio.run(_serve(settings, MetricsOptions.from_args(args)))
    return ExitCode.OK


async def _serve(settings: RuntimeSettings, metrics: MetricsOptions) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop, name="scheduler")
    store = Store.open(settings.store)
    transport = await open_transport(
        settings.broker_url, namespace=settings.namespace, max_message_bytes=settings.max_message_bytes
    )
    # Without --metrics-port the exporter does nothing and exporter.transport is `transport`.
    exporter = MetricsExporter(options=metrics, transport=transport)
    service = SchedulerService(transport=exporter.transport, store=store, settings=settings)
    exporter.collect_from(service=service)
    try:
        exporter.start()
        await service.start()
        exporter.watch_queues([transport.queue_name(JOBS_QUEUE)])
        await stop.wait()
        await service.stop(timeout_s=settings.shutdown_timeout_s)
    finally:
        await exporter.stop()
        await transport.close()
