"""`mpnn export MODEL OUT`: write a stored model's weights to a .npz, safetensors or PyTorch file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.errors import RetryableError
from mpnn_async.interchange import (
    FileFormat,
    Naming,
    export_file,
    torch_sequential_text,
)
from mpnn_async.settings import add_runtime_arguments
from mpnn_async.store import ModelStore, NotFoundError, Store

__all__ = ["register", "run_export"]

_DESCRIPTION = """\
Assemble the latest stored partitions of MODEL into whole layers and write
them to OUT, replacing any file there. Names: layers.<l>.weight of shape
(out, in) and layers.<l>.bias for dense layer l = 1..L, or with
--naming sequential (the default for torch files) the state_dict of a
torch.nn.Sequential with Linear l at module index 2(l-1).
"""


def register(subparsers: Any) -> None:
    """Add the `export` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a stored model's weights to a .npz, safetensors or PyTorch file",
        description=_DESCRIPTION,
    )
    parser.add_argument("model", metavar="MODEL", help="model name in the store")
    parser.add_argument("out", metavar="OUT", help="file to write: .npz, .safetensors, or .pt/.pth (needs PyTorch)")
    parser.add_argument(
        "--format",
        choices=[member.value for member in FileFormat],
        help="file format (default: from the extension .npz, .safetensors, .pt or .pth)",
    )
    parser.add_argument(
        "--naming",
        choices=[member.value for member in Naming],
        help="tensor names (default: sequential for torch files, layers otherwise)",
    )
    add_runtime_arguments(parser, broker=False)
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> ExitCode:
    """Export the model that `args` name."""
    settings = settings_from_args(args)
    model_store = ModelStore(Store.open(settings.store, create=False), args.model)
    try:
        result = export_file(model_store, args.out, file_format=args.format, naming=args.naming)
    except (NotFoundError, RetryableError) as error:
        print(f"mpnn export: {error}", file=sys.stderr)
        return ExitCode.FAILED
    stored = result.stored
    print(
        f"wrote model {args.model!r} at step {stored.step} (plan {stored.plan.plan_id}) to {args.out}: "
        f"{stored.plan.depth} dense layers, {stored.plan.spec.dtype}, {result.file_format} "
        f"with {result.naming} naming"
    )
    if result.naming is Naming.SEQUENTIAL:
        print(f"it is the state_dict of torch.nn.{torch_sequential_text(stored.plan.spec)}")
    return ExitCode.OK
