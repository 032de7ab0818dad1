"""`mpnn serve MODEL --snapshot NAME`: the inference server daemon."""

from __future__ import annotations

import argparse
import asyncio

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.errors import ConfigError
from mpnn_async.runtime.daemon import install_stop_signals
from mpnn_async.runtime.serving import InferenceServer
from mpnn_async.settings import RuntimeSettings, add_runtime_arguments
from mpnn_async.store import Store
from mpnn_async.transport import open_transport


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve inference requests for a model",
        description="Serve a model's snapshot over the partition workers: take requests from "
        "the queue infer.<model>, batch those that arrive together, reply to each. "
        "`mpnn switch MODEL NAME` changes the snapshot without mixing versions.",
    )
    parser.add_argument("model", help="model name in the store")
    parser.add_argument("--snapshot", required=True, help="snapshot to serve (made by `mpnn snapshot`)")
    parser.add_argument("--max-batch-rows", type=int, default=256, help="rows per batch at most (default 256)")
    parser.add_argument(
        "--max-delay-ms", type=float, default=2.0,
        help="milliseconds a request waits for others to join its batch (default 2)",
    )
    parser.add_argument(
        "--request-timeout", dest="request_timeout_s", type=float, default=30.0,
        help="seconds before a request gets a timed_out error reply (default 30)",
    )
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    settings = settings_from_args(args)
    if not settings.broker_url:
        raise ConfigError("--broker", "missing", fix="give --broker amqp://... or set MPNN_BROKER_URL")
    asyncio.run(_serve(settings, args))
    return ExitCode.OK


async def _serve(settings: RuntimeSettings, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop, name="serve")
    transport = await open_transport(
        settings.broker_url, namespace=settings.namespace, max_message_bytes=settings.max_message_bytes
    )
    server = InferenceServer(
        transport=transport,
        store=Store.open(settings.store),
        model=args.model,
        max_batch_rows=args.max_batch_rows,
        max_delay_s=args.max_delay_ms / 1000,
        request_timeout_s=args.request_timeout_s,
        ready_timeout_s=settings.ready_timeout_s,
        max_message_bytes=transport.max_body_bytes,
    )
    try:
        await server.start(args.snapshot)
        await stop.wait()
        await server.stop()
    finally:
        await transport.close()
