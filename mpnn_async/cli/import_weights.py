"""`mpnn import CONFIG WEIGHTS`: commit a weights file to the store, cut by the config's plan.

The module is not named `import`, a Python keyword; its subcommand is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.config import load_toml
from mpnn_async.errors import ConfigError, RetryableError
from mpnn_async.interchange import FileFormat, import_file
from mpnn_async.planning import plan_from_config
from mpnn_async.runtime.job import TrainingSpec
from mpnn_async.settings import add_runtime_arguments
from mpnn_async.store import ModelStore, Store

__all__ = ["register", "run_import"]

_DESCRIPTION = """\
Read a network's weights from WEIGHTS, check them against CONFIG's [model]
table, cut them into the partitions of CONFIG's [plan] and commit them to the
store at step 0 with fresh optimizer state. `mpnn train` with the same model
name then continues from them. Tensor names: layers.<l>.weight of shape
(out, in) and layers.<l>.bias for dense layer l = 1..L, or the state_dict
names of a torch.nn.Sequential of Linear and activation modules (0.weight,
0.bias, 2.weight, ...), whose Linear modules in order are layers 1..L.
"""


def register(subparsers: Any) -> None:
    """Add the `import` subcommand."""
    parser = subparsers.add_parser(
        "import",
        help="import a network's weights from a .npz, safetensors or PyTorch file",
        description=_DESCRIPTION,
    )
    parser.add_argument(
        "config", metavar="CONFIG", help="TOML file with [model] and [plan] (and optionally [job])"
    )
    parser.add_argument(
        "weights", metavar="WEIGHTS", help="weights file: .npz, .safetensors, or .pt/.pth (needs PyTorch)"
    )
    parser.add_argument(
        "--model", help="model name in the store (default: the config's job.model_name, else job.name)"
    )
    parser.add_argument(
        "--format",
        choices=[member.value for member in FileFormat],
        help="file format (default: from the extension .npz, .safetensors, .pt or .pth)",
    )
    parser.add_argument(
        "--cast",
        action="store_true",
        help="convert float tensors of another precision to the model's dtype instead of rejecting them",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="if the model exists, commit the imported weights as new versions of its partitions",
    )
    add_runtime_arguments(parser, broker=False)
    parser.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> ExitCode:
    """Import the weights file that `args` name."""
    config = load_toml(args.config)
    plan = plan_from_config(config)
    model = args.model or _model_name_of_job(config)
    settings = settings_from_args(args, args.config)
    model_store = ModelStore(Store.open(settings.store, create=True), model)
    try:
        result = import_file(
            model_store,
            plan,
            args.weights,
            file_format=args.format,
            cast=args.cast,
            overwrite=args.overwrite,
        )
    except RetryableError as error:
        print(f"mpnn import: {error}", file=sys.stderr)
        return ExitCode.FAILED
    action = "replaced the weights of" if result.replaced else "created"
    print(
        f"{action} model {result.model!r} in {settings.store}: {plan.depth} dense layers, "
        f"{result.parameter_count} parameters ({plan.spec.dtype}) from {args.weights} "
        f"({result.file_format}, {result.naming} naming), plan {result.plan_id}, step 0, "
        f"partitions {', '.join(f'{name} v{number}' for name, number in result.versions.items())}"
    )
    return ExitCode.OK


def _model_name_of_job(config: Mapping[str, Any]) -> str:
    if "job" not in config:
        raise ConfigError(
            "--model", "missing, and the config has no [job] table to take the name from", fix="give --model NAME"
        )
    return TrainingSpec.from_dict(config["job"]).store_model
