"""The shared store: versioned arrays and immutable JSON documents under one root directory.

`Store` is the storage layer (atomic, checksummed, lock-serialized writes;
lock-free reads); `ModelStore` names the keys of one model's plans,
partitions and checkpoints.
"""

from mpnn_async.errors import ConflictError, CorruptFileError, LockTimeoutError, StoreError
from mpnn_async.store.model_store import ModelStore
from mpnn_async.store.names import Key, validate_key, validate_name
from mpnn_async.store.archive import ArraySource
from mpnn_async.store.store import (
    NotFoundError,
    StaleReadError,
    Store,
    UpdateFunction,
    Version,
    VersionReader,
)

__all__ = [
    "ArraySource",
    "ConflictError",
    "CorruptFileError",
    "Key",
    "LockTimeoutError",
    "ModelStore",
    "NotFoundError",
    "StaleReadError",
    "Store",
    "StoreError",
    "UpdateFunction",
    "Version",
    "VersionReader",
    "validate_key",
    "validate_name",
]
