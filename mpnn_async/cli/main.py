"""Entry point of the `mpnn` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.errors import InvalidInputError, MpnnError, StoreError, TransportError
from mpnn_async.ops.logs import LOG_FORMATS, JsonFormatter, TextFormatter, resolve_log_format

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

# Each module under mpnn_async.cli named here defines `register(subparsers)`,
# which adds its subparser and sets `handler` to a function(args) -> ExitCode.
SUBCOMMANDS = ("plan", "train", "worker", "scheduler", "submit", "status", "snapshot", "serve", "infer", "watch", "plot", "import_weights", "export", "resume", "replan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpnn", description="Train and serve a neural network split by neurons across workers."
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="set the log level explicitly; overrides -v",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object per line with the event and its key=value pairs as "
        "fields (env MPNN_LOG_FORMAT, default text)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"mpnn_async.cli.{name}").register(subparsers)
    # Accept the logging flags after the subcommand too (`mpnn worker ... -v`).
    # SUPPRESS keeps a value given before the subcommand when none is given after it.
    for subparser in subparsers.choices.values():
        subparser.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log more (-v info, -vv debug)"
        )
        subparser.add_argument(
            "--log-level",
            choices=("DEBUG", "INFO", "WARNING", "ERROR"),
            default=argparse.SUPPRESS,
            help="set the log level explicitly; overrides -v",
        )
        subparser.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            default=argparse.SUPPRESS,
            help="text lines, or one JSON object per line (env MPNN_LOG_FORMAT, default text)",
        )
    return parser


def configure_logging(verbose: int, level_name: str | None, log_format: str = "text") -> None:
    if level_name is not None:
        level = getattr(logging, level_name)
    else:
        level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        log_format = resolve_log_format(args.log_format, os.environ)
    except InvalidInputError as error:
        print(f"mpnn {args.command}: invalid input: {error}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    configure_logging(args.verbose, args.log_level, log_format)
    try:
        return int(args.handler(args))
    except InvalidInputError as error:
        print(f"mpnn {args.command}: invalid input: {error}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    except TransportError as error:
        print(f"mpnn {args.command}: broker unreachable: {error}", file=sys.stderr)
        return ExitCode.BROKER_UNREACHABLE
    except StoreError as error:
        print(f"mpnn {args.command}: store unusable: {error}", file=sys.stderr)
        return ExitCode.STORE_UNUSABLE
    except MpnnError as error:
        print(f"mpnn {args.command}: {error}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
