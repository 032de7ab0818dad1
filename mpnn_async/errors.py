"""The package's exception tree, grouped by what the caller should do.

- `InvalidInputError`: the input is wrong; fix it and try again. `ConfigError`
  (a config, job or plan file) and `CodecError` (a message off the wire) are
  the common cases.
- `RetryableError`: the same call may succeed later (lock busy, broker gone,
  store version moved on).
- `FatalError`: the state on disk or the environment is broken; retrying the
  same call will not help.

Third-party errors (OSError from locks, aio-pika's connection errors) are
translated where they are caught, with `raise ... from`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "CorruptFileError",
    "FatalError",
    "InvalidInputError",
    "LockTimeoutError",
    "MpnnError",
    "RetryableError",
    "StoreError",
    "TransportError",
]


class MpnnError(Exception):
    """Root of every error raised on purpose by mpnn-async."""


class InvalidInputError(MpnnError, ValueError):
    """The caller's input is invalid; fixing it is the only remedy."""


class ConfigError(InvalidInputError):
    """A config, job or plan file is invalid.

    `field` is the dotted path of the offending entry (for example
    `model.layers[1].activation`), so the message can name what to fix.
    """

    def __init__(self, field: str, problem: str, *, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class RetryableError(MpnnError):
    """The operation failed for a reason that may go away; retry later."""


class LockTimeoutError(RetryableError, TimeoutError):
    """A store lock was not acquired within its timeout."""


class ConflictError(RetryableError):
    """A store commit found that the version it read is no longer the latest."""


class TransportError(RetryableError):
    """The message broker is unreachable or closed the channel."""


class FatalError(MpnnError):
    """The environment or persisted state is broken; retrying will not help."""


class StoreError(FatalError):
    """The shared store cannot be used (missing root, permissions, bad layout)."""


class CorruptFileError(StoreError):
    """A store file failed its checksum or could not be parsed."""
