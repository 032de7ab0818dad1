"""Store keys of one model, so callers never build keys by hand.

Layout under the store root, for model `m`:

    models/m/plans/_doc.<plan_id>        plan documents (JSON), immutable
    models/m/partitions/<partition>/     one versioned object per partition
    models/m/checkpoints/<checkpoint>/   one versioned object per checkpoint

A partition object contains the partition's weight slices and its optimizer
state as arrays of one version, so an optimizer step commits both at once.
A checkpoint is an object of its own rather than a reference to partition
versions, so pruning partitions never breaks a checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mpnn_async.errors import InvalidInputError
from mpnn_async.store.names import Key, validate_name
from mpnn_async.store.store import Store

__all__ = ["ModelStore"]


class ModelStore:
    """The plans, partitions and checkpoints of model `model` in `store`."""

    def __init__(self, store: Store, model: str) -> None:
        self._store = store
        self._model = validate_name(model, field="model name")

    @property
    def store(self) -> Store:
        return self._store

    @property
    def model(self) -> str:
        return self._model

    def __repr__(self) -> str:
        return f"<ModelStore model={self._model!r} root={str(self._store.root)!r}>"

    @property
    def plans_key(self) -> Key:
        return ("models", self._model, "plans")

    @property
    def partitions_key(self) -> Key:
        return ("models", self._model, "partitions")

    @property
    def checkpoints_key(self) -> Key:
        return ("models", self._model, "checkpoints")

    def save_plan(self, plan: Mapping[str, Any] | bytes | str, *, plan_id: str) -> None:
        """Store a plan, given as a dict or as JSON text, under `plan_id`.

        Saving the same plan again does nothing; saving different content
        under an existing id raises InvalidInputError.
        """
        if isinstance(plan, (bytes, str)):
            plan = _parse_plan_json(plan, plan_id=plan_id)
        self._store.put_document(self.plans_key, plan_id, plan)

    def load_plan(self, plan_id: str) -> dict[str, Any]:
        """Return the plan stored under `plan_id`; raise NotFoundError if there is none."""
        return self._store.get_document(self.plans_key, plan_id)

    def list_plans(self) -> list[str]:
        """Return the ids of the stored plans, sorted."""
        return self._store.list_documents(self.plans_key)

    def partition_key(self, partition: str) -> Key:
        return (*self.partitions_key, validate_name(partition, field="partition name"))

    def list_partitions(self) -> list[str]:
        """Return the names of the partitions with at least one committed version, sorted."""
        return self._list_objects(self.partitions_key)

    def checkpoint_key(self, checkpoint: str) -> Key:
        return (*self.checkpoints_key, validate_name(checkpoint, field="checkpoint name"))

    def list_checkpoints(self) -> list[str]:
        """Return the names of the checkpoints with at least one committed version, sorted."""
        return self._list_objects(self.checkpoints_key)

    def _list_objects(self, parent: Key) -> list[str]:
        # A directory without a committed version is left by a writer that
        # crashed before its first commit; it is not an object yet.
        return [
            name
            for name in self._store.list_children(parent)
            if self._store.latest_version((*parent, name)) is not None
        ]


def _parse_plan_json(text: bytes | str, *, plan_id: str) -> dict[str, Any]:
    try:
        plan = json.loads(text)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidInputError(f"invalid plan {plan_id!r}: not valid JSON ({error})") from error
    if not isinstance(plan, dict):
        raise InvalidInputError(
            f"invalid plan {plan_id!r}: expected a JSON object, got {type(plan).__name__}"
        )
    return plan
