"""Start `mpnn worker` on the first partition of a list that no running worker has claimed.

    python -m mpnn_async.ops.claim --partitions a,b,c [-- extra `mpnn worker` flags]

This is the entrypoint of identical worker containers (`docker compose up
--scale worker=N`): a container cannot know its replica index, so each one
claims a partition through the shared store instead. The claim is a POSIX
record lock (`fcntl.lockf`) on `<store>/_claims/<partition>.lock`. The
process then replaces itself with `mpnn worker --partition P` (exec), which
keeps the lock, so the claim ends when that worker process exits, however it
exits. A container that finds every partition claimed waits as a spare and
takes the first partition whose worker exits.

The claimed partition is also written to a file (`--record`, default
`/tmp/mpnn-partition`) for the container's health check.

NOTE: on NFS the lock lives on the server. A host cut off from it for longer
than the NFSv4 lease (90 s by default on Linux servers) loses the lock while
its worker still runs, and a spare may then claim the same partition. Two
workers on one partition queue split the blocks of a micro-batch between
them, and the job's waits time out.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mpnn_async.errors import ConfigError, InvalidInputError
from mpnn_async.ops.logs import JsonFormatter, TextFormatter, resolve_log_format
from mpnn_async.store import validate_name

__all__ = ["CLAIMS_DIRECTORY", "claim_partition", "main"]

# Named explicitly: run as `python -m`, __name__ would be "__main__".
log = logging.getLogger("mpnn_async.ops.claim")

# Store keys cannot start with `_`, so this directory never collides with one.
CLAIMS_DIRECTORY = "_claims"
DEFAULT_RECORD = "/tmp/mpnn-partition"


def claim_partition(store_root: str | os.PathLike[str], partitions: Sequence[str]) -> tuple[str, int] | None:
    """Lock the claim file of the first unclaimed partition; return it and the open descriptor, or None.

    The descriptor is inheritable so that the lock survives `exec`; closing it releases the claim.
    """
    directory = Path(store_root) / CLAIMS_DIRECTORY
    directory.mkdir(exist_ok=True)
    for partition in partitions:
        descriptor = os.open(directory / f"{partition}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # EAGAIN or EACCES: another process has locked this partition.
            os.close(descriptor)
            continue
        os.set_inheritable(descriptor, True)
        return partition, descriptor
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        handler = logging.StreamHandler(sys.stderr)
        json_lines = resolve_log_format(None, os.environ) == "json"
        handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
        logging.basicConfig(level=logging.INFO, handlers=[handler])
        partitions = _partition_list(args.partitions)
        store = args.store or os.environ.get("MPNN_STORE") or "./mpnn-store"
        if not Path(store).is_dir():
            raise ConfigError("MPNN_STORE", f"store root {store} is not a directory", fix="mount the shared store there")
    except InvalidInputError as error:
        print(f"mpnn claim: invalid input: {error}", file=sys.stderr)
        return 3
    waiting_logged = False
    while True:
        claimed = claim_partition(store, partitions)
        if claimed is not None:
            break
        if not waiting_logged:
            log.info("claim.waiting partitions=%s retry_s=%.1f", ",".join(partitions), args.retry_s)
            waiting_logged = True
        time.sleep(args.retry_s)
    partition, _descriptor = claimed
    Path(args.record).write_text(partition + "\n")
    log.info("claim.acquired partition=%s store=%s", partition, store)
    command = [sys.executable, "-m", "mpnn_async", "worker", "--partition", partition, "--store", store]
    command += args.worker_arguments
    os.execv(sys.executable, command)
    return 1  # not reached: execv replaces the process or raises


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mpnn_async.ops.claim",
        description="Claim the first free partition in the shared store and exec `mpnn worker` for it.",
    )
    parser.add_argument(
        "--partitions", default=os.environ.get("MPNN_PARTITIONS", ""),
        help="comma-separated partitions to choose from, in order (env MPNN_PARTITIONS)",
    )
    parser.add_argument("--store", help="shared store directory (env MPNN_STORE, default ./mpnn-store)")
    parser.add_argument(
        "--record", default=DEFAULT_RECORD, help=f"file to write the claimed partition to (default {DEFAULT_RECORD})"
    )
    parser.add_argument(
        "--retry-s", type=float, default=5.0, help="seconds between attempts while every partition is claimed"
    )
    parser.add_argument("worker_arguments", nargs="*", help="flags passed on to `mpnn worker` (after --)")
    return parser.parse_args(argv)


def _partition_list(text: str) -> list[str]:
    partitions = [name.strip() for name in text.split(",") if name.strip()]
    if not partitions:
        raise ConfigError("MPNN_PARTITIONS", "missing", fix="give --partitions a,b,c or set MPNN_PARTITIONS")
    for name in partitions:
        validate_name(name, field="MPNN_PARTITIONS")
    return partitions


if __name__ == "__main__":
    sys.exit(main())
