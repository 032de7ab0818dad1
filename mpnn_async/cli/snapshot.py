"""`mpnn snapshot MODEL NAME`: freeze a model's latest weights under a name for serving."""

from __future__ import annotations

import argparse

import orjson

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.runtime.snapshots import create_snapshot
from mpnn_async.settings import add_runtime_arguments
from mpnn_async.store import ModelStore, Store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "snapshot",
        help="freeze a model's latest weights under a name",
        description="Copy every partition's latest stored version into an immutable, named "
        "snapshot that `mpnn serve` can serve. Every partition must be at the same step.",
    )
    parser.add_argument("model", help="model name in the store (a job's name unless it set model_name)")
    parser.add_argument("name", help="snapshot name, e.g. v1 (letters, digits, '_', '.', '-')")
    add_runtime_arguments(parser, broker=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    settings = settings_from_args(args)
    store = Store.open(settings.store)
    manifest = create_snapshot(ModelStore(store, args.model), args.name)
    print(orjson.dumps(manifest).decode())
    return ExitCode.OK
