"""File names inside one key's directory, and listing and removing them.

The key ("models", "mnist", "partitions", "p0") maps to the directory
`<root>/models/mnist/partitions/p0`, which contains:

    _LOCK                lock file of the key, created once and never replaced
    _LATEST              pointer: the number of the latest committed version
    _v000000000007       version 7: arrays and metadata, immutable once committed
    _doc.<name>          an immutable JSON document
    .tmp.<target>.<...>  a write in progress, or one left by a crashed writer
    <name>/              the directory of the child key (*key, name)

Valid names start with a letter or digit, so no child key can take the name
of one of the store's own files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mpnn_async.errors import StoreError

__all__ = [
    "DOCUMENT_PREFIX",
    "LOCK_FILE",
    "POINTER_FILE",
    "list_directory",
    "unlink",
    "version_file_name",
    "version_numbers",
]

LOCK_FILE = "_LOCK"
POINTER_FILE = "_LATEST"
DOCUMENT_PREFIX = "_doc."
_VERSION_FILE = re.compile(r"_v(\d{12,})")


def version_file_name(number: int) -> str:
    # Zero-padded so that a plain directory listing sorts versions in order.
    return f"_v{number:012d}"


def version_numbers(directory: Path) -> list[int]:
    """Return the numbers of the version files in `directory`, committed or not, sorted."""
    numbers = []
    for name in list_directory(directory):
        match = _VERSION_FILE.fullmatch(name)
        if match is not None:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def list_directory(directory: Path) -> list[str]:
    """Return the entry names of `directory`, or [] if it does not exist."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise StoreError(f"failed to list store directory {directory}: {error}") from error


def unlink(path: Path) -> None:
    """Remove `path` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise StoreError(f"failed to remove store file {path}: {error}") from error
