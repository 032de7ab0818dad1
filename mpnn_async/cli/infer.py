"""`mpnn infer MODEL INPUT`: send one inference request and print or save the outputs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.client import InferenceClient
from mpnn_async.errors import ConfigError, InvalidInputError
from mpnn_async.runtime.serving import SWITCH_TYPE
from mpnn_async.runtime.protocol import inference_routing_key
from mpnn_async.settings import RuntimeSettings, add_runtime_arguments
from mpnn_async.transport import open_transport
from mpnn_async.transport.base import Outgoing
from mpnn_async.wire import encode_control


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="run inference on a file of inputs",
        description="Send the rows of INPUT (.npy, or .csv with one sample per row) to `mpnn serve` "
        "and print the outputs as CSV, or save them with --output (.npy or .csv).",
    )
    parser.add_argument("model", help="model name being served")
    parser.add_argument("input", help="inputs: .npy (2-d) or .csv (numbers only)")
    parser.add_argument("--output", help="write the outputs here (.npy or .csv) instead of stdout")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"), help="dtype the model computes in")
    parser.add_argument("--timeout", dest="timeout_s", type=float, default=30.0, help="seconds to wait for the reply")
    add_runtime_arguments(parser)
    parser.set_defaults(handler=run)

    switch = subparsers.add_parser(
        "switch",
        help="make `mpnn serve` serve another snapshot",
        description="Tell the server of MODEL to load SNAPSHOT on every partition and then serve "
        "new requests with it; requests already running finish on the old snapshot.",
    )
    switch.add_argument("model", help="model name being served")
    switch.add_argument("snapshot", help="snapshot to switch to")
    add_runtime_arguments(switch)
    switch.set_defaults(handler=run_switch)


def run(args: argparse.Namespace) -> ExitCode:
    settings = _require_broker(settings_from_args(args))
    inputs = _read_inputs(Path(args.input), np.dtype(args.dtype))
    outputs = asyncio.run(_infer(settings, args.model, inputs, args.timeout_s))
    if args.output:
        _write_outputs(Path(args.output), outputs)
    else:
        np.savetxt(sys.stdout, outputs, delimiter=",", fmt="%.17g")
    return ExitCode.OK


def run_switch(args: argparse.Namespace) -> ExitCode:
    settings = _require_broker(settings_from_args(args))
    asyncio.run(_switch(settings, args.model, args.snapshot))
    print(f"asked the server of {args.model} to switch to snapshot {args.snapshot}")
    return ExitCode.OK


def _require_broker(settings: RuntimeSettings) -> RuntimeSettings:
    if not settings.broker_url:
        raise ConfigError("--broker", "missing", fix="give --broker amqp://... or set MPNN_BROKER_URL")
    return settings


async def _infer(settings: RuntimeSettings, model: str, inputs: np.ndarray, timeout_s: float) -> np.ndarray:
    client = await InferenceClient.connect(
        settings.broker_url, namespace=settings.namespace, model=model, timeout_s=timeout_s,
        max_message_bytes=settings.max_message_bytes,
    )
    async with client:
        return await client.infer(inputs)


async def _switch(settings: RuntimeSettings, model: str, snapshot: str) -> None:
    transport = await open_transport(
        settings.broker_url, namespace=settings.namespace, max_message_bytes=settings.max_message_bytes
    )
    try:
        await transport.publish(
            Outgoing(inference_routing_key(model), encode_control(SWITCH_TYPE, {"snapshot": snapshot}))
        )
    finally:
        await transport.close()


def _read_inputs(path: Path, dtype: np.dtype) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            array = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"cannot read inputs from {path}: {error}") from None
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2:
        raise InvalidInputError(f"inputs in {path} have shape {array.shape}; give one sample per row")
    return np.ascontiguousarray(array, dtype=dtype)


def _write_outputs(path: Path, outputs: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, outputs, allow_pickle=False)
    else:
        np.savetxt(path, outputs, delimiter=",", fmt="%.17g")
