"""`mpnn plan CONFIG`: build the plan of a config and print it as a table or as JSON."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Mapping

from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.config import load_toml, require_table
from mpnn_async.errors import ConfigError
from mpnn_async.model.optim import OptimizerKind
from mpnn_async.model.spec import NetworkSpec
from mpnn_async.planning.distributor import build_plan, plan_from_config
from mpnn_async.planning.naming import validate_partition_names
from mpnn_async.planning.plan import Plan
from mpnn_async.planning.report import format_plan_report
from mpnn_async.planning.uniform import (
    STRATEGY_CHOICES,
    parse_partitions_option,
    uniform_plan_config,
)

__all__ = ["register", "run_plan"]

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Build the plan of CONFIG's [model] and [plan] tables and print, per partition
and layer, the neurons and parameters it owns; per layer boundary, the
messages per micro-batch and payload bytes per micro-batch row, forward and
backward; and the estimated memory per partition. Other tables are ignored.
"""


def register(subparsers: Any) -> None:
    """Add the `plan` subcommand."""
    parser = subparsers.add_parser(
        "plan",
        help="show how a config splits the network into partitions",
        description=_DESCRIPTION,
    )
    parser.add_argument("config", metavar="CONFIG", help="TOML file with [model] and [plan]")
    parser.add_argument(
        "--strategy",
        metavar="STRATEGY",
        help=(
            f"ignore the config's [plan] and apply one strategy to every layer: {STRATEGY_CHOICES}"
        ),
    )
    parser.add_argument(
        "--partitions",
        metavar="N|a,b,c",
        help=(
            "partitions for --strategy: a count N (named p1..pN) or comma-separated names "
            "(default: the config's plan.partitions)"
        ),
    )
    parser.add_argument(
        "--json", action="store_true", help="print the canonical plan JSON instead of tables"
    )
    parser.add_argument(
        "--optimizer",
        choices=[kind.value for kind in OptimizerKind],
        default=OptimizerKind.ADAM.value,
        help="optimizer whose state the memory estimate counts (default: adam)",
    )
    parser.add_argument(
        "--rows-in-flight",
        type=_positive_int,
        default=64,
        metavar="ROWS",
        help="micro-batch rows kept in memory at once, for the memory total (default: 64)",
    )
    parser.set_defaults(handler=run_plan)


def run_plan(args: argparse.Namespace) -> ExitCode:
    """Build the plan that `args` describe and print it."""
    if args.partitions is not None and args.strategy is None:
        print("mpnn plan: --partitions needs --strategy, e.g. --strategy even", file=sys.stderr)
        return ExitCode.USAGE

    config = load_toml(args.config)
    if args.strategy is None:
        plan = plan_from_config(config)
    else:
        plan = _plan_from_options(config, args.strategy, args.partitions)
    log.info("plan.ready id=%s config=%s", plan.plan_id, args.config)

    if args.json:
        sys.stdout.buffer.write(plan.to_json() + b"\n")
        sys.stdout.flush()
    else:
        report = format_plan_report(
            plan, optimizer=args.optimizer, rows_in_flight=args.rows_in_flight
        )
        sys.stdout.write(report)
    return ExitCode.OK


def _plan_from_options(config: Mapping[str, Any], strategy: str, partitions: str | None) -> Plan:
    spec = NetworkSpec.from_dict(require_table(config, "model"))
    if partitions is not None:
        names = parse_partitions_option(partitions)
    else:
        names = _partitions_of_config(config)
    return build_plan(spec, uniform_plan_config(strategy, names, depth=spec.depth))


def _partitions_of_config(config: Mapping[str, Any]) -> tuple[str, ...]:
    plan_table = config.get("plan")
    if not isinstance(plan_table, Mapping) or "partitions" not in plan_table:
        raise ConfigError(
            "--partitions",
            "missing, and the config has no plan.partitions",
            fix="give --partitions N or --partitions a,b,c",
        )
    return validate_partition_names(plan_table["partitions"], "plan.partitions")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value
