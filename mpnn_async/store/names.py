"""Validation of the names that callers pass to the store.

A key is a tuple of path components, such as ("models", "mnist",
"partitions", "p0"), and maps to the directory `<root>/models/mnist/partitions/p0`.
Every component, document name and array name must match `NAME_PATTERN`, so
no name can contain a separator, be `.` or `..`, or be absolute, and none can
reach outside the store root. Names start with a letter or digit, which leaves
names starting with `_` or `.` free for the store's own files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mpnn_async.errors import InvalidInputError

__all__ = ["MAX_NAME_LENGTH", "NAME_PATTERN", "Key", "validate_key", "validate_name"]

Key = tuple[str, ...]

# 128 characters fit a 64-digit SHA-256 hex id with a prefix, and keep the
# store's temporary file names (about 40 characters longer) well below the
# 255-byte file name limit of Linux file systems and NFS servers.
MAX_NAME_LENGTH = 128
NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_LENGTH - 1}}}")

_NAME_RULE = (
    f"use 1 to {MAX_NAME_LENGTH} characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"
)


def validate_name(name: object, *, field: str) -> str:
    """Return `name` if it is a valid store name, else raise InvalidInputError naming `field`."""
    if not isinstance(name, str):
        raise InvalidInputError(
            f"invalid {field} {name!r}: must be a str, got {type(name).__name__}"
        )
    if NAME_PATTERN.fullmatch(name) is None:
        raise InvalidInputError(f"invalid {field} {name!r}: {_NAME_RULE}")
    return name


def validate_key(key: Iterable[str], *, allow_empty: bool = False) -> Key:
    """Return `key` as a tuple of validated components, else raise InvalidInputError.

    A plain string is rejected rather than split into characters, because
    `("models/mnist")` without a trailing comma is a common slip.
    """
    if isinstance(key, (str, bytes)):
        raise InvalidInputError(
            f"invalid store key {key!r}: a key is a tuple of names such as ('models', 'mnist'), "
            "not a string"
        )
    try:
        components = tuple(key)
    except TypeError:
        raise InvalidInputError(f"invalid store key {key!r}: must be a tuple of names") from None
    if not components and not allow_empty:
        raise InvalidInputError("invalid store key (): give at least one name")
    for component in components:
        validate_name(component, field=f"component of store key {components!r}")
    return components
