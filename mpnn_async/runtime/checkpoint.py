"""Job checkpoints: where a job can restart from after a failure, kept in the store.

A checkpoint names a step that every partition has persisted, the store
version of each partition at that step, and the data position that follows
it (epoch and batch index). Rolling every partition back to those versions
and replaying the data from that position gives the same weights as a run
that never failed, because every step is deterministic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mpnn_async.store import Store

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint", "load_job_document", "save_job_document"]


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    # Optimizer steps applied to the stored weights (the model's step).
    step: int
    # The next batch to run: batch `batch` of epoch `epoch` (may equal the epoch's batch count).
    epoch: int
    batch: int
    # Steps this job has run up to the checkpoint.
    steps_done: int
    # Partition name -> store version holding its weights at `step`.
    versions: dict[str, int]
    # The job generation that wrote it; a restart uses a higher one.
    generation: int
    finished: bool = False
    # The plan the partitions were stored under; empty means the job document's plan.
    plan_id: str = ""

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Checkpoint:
        return cls(
            step=int(meta["step"]),
            epoch=int(meta["epoch"]),
            batch=int(meta["batch"]),
            steps_done=int(meta["steps_done"]),
            versions={str(name): int(number) for name, number in meta["versions"].items()},
            generation=int(meta["generation"]),
            finished=bool(meta.get("finished", False)),
            plan_id=str(meta.get("plan_id", "")),
        )


def _checkpoint_key(job: str) -> tuple[str, ...]:
    return ("jobs", job, "checkpoint")


def save_checkpoint(store: Store, job: str, checkpoint: Checkpoint) -> None:
    key = _checkpoint_key(job)
    store.update(key, lambda _previous: ({}, checkpoint.to_meta()))
    store.prune(key, keep=2)


def load_checkpoint(store: Store, job: str) -> Checkpoint | None:
    key = _checkpoint_key(job)
    if store.latest_version(key) is None:
        return None
    return Checkpoint.from_meta(store.read(key).meta)


def save_job_document(store: Store, job: str, document: dict[str, Any]) -> None:
    """Keep the job's document, so `mpnn resume JOB` can restart it without the file."""
    key = ("jobs", job, "spec")
    store.update(key, lambda _previous: ({}, document))
    store.prune(key, keep=1)


def load_job_document(store: Store, job: str) -> dict[str, Any] | None:
    key = ("jobs", job, "spec")
    if store.latest_version(key) is None:
        return None
    return store.read(key).meta
