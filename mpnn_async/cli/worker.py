"""`mpnn worker`: the partition worker daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.errors import ConfigError
from mpnn_async.ops.blas import limit_blas_threads
from mpnn_async.planning.naming import validate_partition_names
from mpnn_async.ops.health import add_check_argument, run_health_check, worker_queues
from mpnn_async.ops.metrics import MetricsExporter, MetricsOptions, add_metrics_arguments
from mpnn_async.runtime.daemon import install_stop_signals
from mpnn_async.runtime.worker import Worker
from mpnn_async.settings import RuntimeSettings, add_runtime_arguments
from mpnn_async.store import Store
from mpnn_async.transport import open_transport

log = logging.getLogger(__name__)

# Exit even if the broker does not confirm the connection close in time.
_CLOSE_TIMEOUT_S = 10.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a partition worker daemon",
        description="Host one or more partitions: consume their queues, compute their neurons, "
        "persist their weights to the store. Without --partition the worker joins the pool and "
        "hosts the partitions that schedulers assign it. Stops cleanly on SIGTERM.",
    )
    parser.add_argument(
        "--partition",
        dest="partitions",
        action="append",
        default=[],
        help="partition to host (repeat for several); leave out to join the pool",
    )
    parser.add_argument(
        "--worker-id",
        help="this worker's id in routes and heartbeats: letters, digits, '_' and '-' "
        "(default: <host>-<pid>)",
    )
    add_runtime_arguments(parser)
    parser.add_argument("--config", help="TOML file whose [runtime] table gives defaults")
    parser.add_argument("--prefetch", type=int, help="unacknowledged messages per partition queue (default 256)")
    parser.add_argument(
        "--shutdown-timeout",
        dest="shutdown_timeout_s",
        type=float,
        help="seconds to finish running work after SIGTERM (default 30)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        help="threads of the BLAS library (NumPy's matrix products) in this process "
        "(env MPNN_BLAS_THREADS, default 1; 0 keeps the library's default of one per core); "
        "give each worker its share of the host's cores",
    )
    parser.add_argument(
        "--optimizer-state-dir",
        help="keep the optimizer state (Adam's two arrays, the momentum buffer) of each hosted "
        "partition in an unnamed file in this local directory instead of in RAM, so the worker "
        "needs memory for weights and gradients only; each step reads and writes the state once "
        "(env MPNN_OPTIMIZER_STATE_DIR; default: in RAM)",
    )
    add_check_argument(parser)
    add_metrics_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    settings = settings_from_args(args, args.config)
    if args.partitions:
        validate_partition_names(args.partitions, "--partition")
    if args.worker_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", args.worker_id):
        raise ConfigError(
            "--worker-id", f"invalid id {args.worker_id!r}", fix="use 1 to 64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    if not settings.broker_url:
        raise ConfigError(
            "--broker", "missing", fix="give --broker amqp://... or set MPNN_BROKER_URL; "
            "`mpnn train` runs a job without a broker"
        )
    if args.check:
        return run_health_check(settings, command="worker", queues=worker_queues(args.partitions))
    # Before the first matrix product, so no product runs with the default pool.
    limit_blas_threads(settings.blas_threads)
    fatal_reason = asyncio.run(
        _serve(settings, args.partitions, MetricsOptions.from_args(args), worker_id=args.worker_id)
    )
    if fatal_reason is not None:
        print(f"mpnn worker: stopped: {fatal_reason}", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


async def _serve(
    settings: RuntimeSettings, partitions: list[str], metrics: MetricsOptions, *, worker_id: str | None = None
) -> str | None:
    """Run the worker until SIGTERM; return why it had to stop on its own, if it did."""
    stop = asyncio.Event()
    install_stop_signals(stop, name="worker")
    store = Store.open(settings.store)
    transport = await open_transport(
        settings.broker_url, namespace=settings.namespace, max_message_bytes=settings.max_message_bytes
    )
    # Without --metrics-port the exporter does nothing and exporter.transport is `transport`.
    exporter = MetricsExporter(options=metrics, transport=transport)
    worker = Worker(
        transport=exporter.transport,
        store=store,
        partitions=partitions,
        worker_id=worker_id,
        prefetch=settings.prefetch,
        # The largest block it decodes: larger than the broker's limit, since big blocks arrive in chunks.
        max_message_bytes=transport.max_body_bytes,
        # A worker that cannot consume any more exits non-zero so its supervisor restarts it.
        on_fatal=lambda _reason: stop.set(),
        optimizer_state_dir=settings.optimizer_state_dir,
    )
    exporter.collect_from(worker=worker)
    try:
        exporter.start()
        await worker.start()
        # TODO: a pool worker's queues change with its assignments; only the first ones are watched.
        exporter.watch_queues(worker.queues)
        await stop.wait()
        await worker.stop(timeout_s=settings.shutdown_timeout_s)
    finally:
        await exporter.stop()
        try:
            await asyncio.wait_for(transport.close(), _CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("worker.close_timeout timeout_s=%.0f", _CLOSE_TIMEOUT_S)
    return worker.fatal_reason
