"""Named, immutable snapshots of a model: every partition's weights at one step.

A snapshot copies each partition's latest stored version into an object of
its own, `models/<model>/snapshots/<name>/<partition>`, committed once and
never changed, and writes a manifest document (plan id, step, partition
versions) last. Serving reads a snapshot, so pruning the training versions
never touches what is being served, and every partition of one request reads
the same step.
"""

from __future__ import annotations

import logging
from typing import Any

from mpnn_async.errors import ConflictError, InvalidInputError, StoreError
from mpnn_async.planning import Plan
from mpnn_async.store import ModelStore, Version, VersionReader
from mpnn_async.store.names import validate_name

__all__ = [
    "create_snapshot",
    "load_manifest",
    "open_snapshot_partition",
    "read_snapshot_partition",
    "snapshot_partition_key",
]

log = logging.getLogger(__name__)


def _snapshots_key(model_store: ModelStore) -> tuple[str, ...]:
    return ("models", model_store.model, "snapshots")


def snapshot_partition_key(model_store: ModelStore, name: str, partition: str) -> tuple[str, ...]:
    return (*_snapshots_key(model_store), validate_name(name, field="snapshot name"), partition)


def create_snapshot(model_store: ModelStore, name: str) -> dict[str, Any]:
    """Copy every partition's latest version into snapshot `name`; return its manifest.

    Raises InvalidInputError if the snapshot exists. Raises StoreError if the
    partitions are not all at the same step of the same plan, because a job
    is still writing them; snapshot after a step that every partition persisted.
    """
    store = model_store.store
    if name in list_snapshots(model_store):
        raise InvalidInputError(f"snapshot {name!r} of model {model_store.model!r} exists; snapshots never change, pick a new name")
    partitions = model_store.list_partitions()
    if not partitions:
        raise InvalidInputError(f"model {model_store.model!r} has no stored partitions to snapshot")
    versions = {partition: store.read(model_store.partition_key(partition)) for partition in partitions}
    plan_ids = {version.meta.get("plan_id") for version in versions.values()}
    steps = {version.meta.get("step") for version in versions.values()}
    if len(plan_ids) != 1 or len(steps) != 1:
        raise StoreError(
            f"partitions of model {model_store.model!r} are at steps {sorted(map(str, steps))} "
            f"of plans {sorted(map(str, plan_ids))}; snapshot when every partition has persisted the same step"
        )
    plan_id = plan_ids.pop()
    plan = Plan.from_dict(model_store.load_plan(plan_id))
    if set(plan.partitions) != set(partitions):
        raise StoreError(f"model {model_store.model!r} stores partitions {partitions}, its plan has {list(plan.partitions)}")
    for partition, version in versions.items():
        try:
            store.commit(
                snapshot_partition_key(model_store, name, partition),
                version.arrays,
                {**version.meta, "source_version": version.number},
                expected_version=None,
            )
        except ConflictError:
            raise InvalidInputError(f"snapshot {name!r} is being written by another process") from None
    manifest = {
        "name": name,
        "plan_id": plan_id,
        "step": steps.pop(),
        "versions": {partition: version.number for partition, version in versions.items()},
    }
    # The manifest is written last: a snapshot without one is incomplete and unusable.
    store.put_document(_snapshots_key(model_store), name, manifest)
    log.info("snapshot.created model=%s snapshot=%s step=%s", model_store.model, name, manifest["step"])
    return manifest


def list_snapshots(model_store: ModelStore) -> list[str]:
    key = _snapshots_key(model_store)
    try:
        return model_store.store.list_documents(key)
    except StoreError:
        return []


def load_manifest(model_store: ModelStore, name: str) -> dict[str, Any]:
    """Return the manifest of a complete snapshot; raise InvalidInputError if there is none."""
    if name not in list_snapshots(model_store):
        raise InvalidInputError(
            f"model {model_store.model!r} has no snapshot {name!r}; create it with `mpnn snapshot {model_store.model} {name}`"
        )
    return model_store.store.get_document(_snapshots_key(model_store), name)


def read_snapshot_partition(model_store: ModelStore, name: str, partition: str) -> Version:
    load_manifest(model_store, name)
    return model_store.store.read(snapshot_partition_key(model_store, name, partition))


def open_snapshot_partition(model_store: ModelStore, name: str, partition: str) -> VersionReader:
    """Open one partition of snapshot `name` to read its arrays one by one."""
    load_manifest(model_store, name)
    return model_store.store.open_version(snapshot_partition_key(model_store, name, partition))
