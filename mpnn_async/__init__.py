"""mpnn-async: one neural network split by neurons across worker daemons."""

from mpnn_async.errors import (
    ConfigError,
    ConflictError,
    FatalError,
    InvalidInputError,
    MpnnError,
    RetryableError,
)

__all__ = [
    "ConfigError",
    "ConflictError",
    "FatalError",
    "InvalidInputError",
    "MpnnError",
    "RetryableError",
]

__version__ = "0.1.0"
