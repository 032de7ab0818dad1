"""`mpnn status [JOB]`: jobs, their progress, partitions and stored versions."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from mpnn_async.cli.common import settings_from_args
from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.runtime.progress import read_progress
from mpnn_async.runtime.census import take_census
from mpnn_async.settings import RuntimeSettings, add_runtime_arguments
from mpnn_async.transport import open_transport
from mpnn_async.store import ModelStore, Store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show jobs, progress and partitions",
        description="Read the shared store and show each job's latest progress and its model's "
        "partitions with their stored version and step. With a broker, also listen to the "
        "workers' heartbeats and list the live workers, their partitions, the age of their last "
        "heartbeat and the depth of each partition queue.",
    )
    parser.add_argument("job", nargs="?", help="show only this job")
    add_runtime_arguments(parser)
    parser.add_argument(
        "--listen", dest="listen_s", type=float, default=2.0,
        help="seconds to listen for worker heartbeats when a broker is given (default 2)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> ExitCode:
    settings = settings_from_args(args)
    store = Store.open(settings.store, create=False)
    known = store.list_children(("jobs",)) if (store.root / "jobs").is_dir() else []
    if args.job and args.job not in known:
        print(f"mpnn status: no job {args.job!r} in store {settings.store}", file=sys.stderr)
        return ExitCode.FAILED
    jobs = [args.job] if args.job else known
    report: list[dict[str, Any]] = []
    for job in jobs:
        progress = read_progress(store, job)
        partitions: list[dict[str, Any]] = []
        entry = {"job": job, "progress": progress, "partitions": partitions}
        if progress and progress.get("model"):
            model_store = ModelStore(store, progress["model"])
            workers = progress.get("workers") or {}
            replicas = progress.get("replicas") or {}
            for partition in model_store.list_partitions():
                version = store.read(model_store.partition_key(partition))
                partitions.append(
                    {
                        "partition": partition,
                        "version": version.number,
                        "step": version.meta.get("step"),
                        "worker": workers.get(partition),
                        "replicas": replicas.get(partition, []),
                    }
                )
        report.append(entry)
    census = asyncio.run(_census(settings, args.listen_s)) if settings.broker_url else None
    if args.json:
        print(orjson.dumps({"jobs": report, "workers": census}).decode())
        return ExitCode.OK
    if census is not None:
        _print_census(census)
    if not report:
        print(f"no jobs in store {settings.store}")
    for entry in report:
        progress = entry["progress"] or {}
        print(
            f"job {entry['job']}: {progress.get('state', 'unknown')} "
            f"step {progress.get('step')}/{progress.get('total_steps')} "
            f"loss {_number(progress.get('loss'))} test accuracy {_number(progress.get('accuracy'))}"
        )
        if progress.get("stragglers"):
            print(f"  stragglers (slowest micro-batches last step): {', '.join(progress['stragglers'])}")
        for partition in entry["partitions"]:
            served_by = ",".join(partition["replicas"]) or partition["worker"] or "unknown"
            print(
                f"  partition {partition['partition']}: version {partition['version']} "
                f"step {partition['step']} workers {served_by}"
            )
    return ExitCode.OK


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


async def _census(settings: RuntimeSettings, listen_s: float) -> dict[str, Any]:
    transport = await open_transport(
        settings.broker_url, namespace=settings.namespace, max_message_bytes=settings.max_message_bytes
    )
    try:
        return await take_census(transport, listen_s=listen_s)
    finally:
        await transport.close()


def _print_census(census: dict[str, Any]) -> None:
    workers = census["workers"]
    print(f"{len(workers)} live workers (heartbeats heard in {census['listened_s']} s)")
    for worker in workers:
        depths = ", ".join(f"{p}: {d}" for p, d in worker.get("queue_depths", {}).items() if d is not None)
        print(
            f"  worker {worker['worker']}{' (pool)' if worker.get('pool') else ''}: "
            f"partitions {','.join(worker['partitions']) or 'none yet'}, "
            f"last heartbeat {worker['last_heartbeat_s_ago']:.1f} s ago"
            + (f", queued {depths}" if depths else "")
        )
    for partition in census["partitions"]:
        depth = partition["queue_depth"]
        print(
            f"  partition {partition['partition']}: {partition['workers']} worker(s), "
            f"queued messages {'missing' if depth is None else depth}"
        )
