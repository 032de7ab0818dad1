"""Byte views of received messages and the size check that runs before any parsing."""

from __future__ import annotations

from mpnn_async.wire.errors import CodecError, RejectReason

__all__ = ["byte_view", "check_frame_size"]


def byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """Return a flat unsigned-byte view of `data` without copying it.

    Raises TypeError for an object without the buffer protocol (such as str) or a
    non-contiguous memoryview.
    """
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def check_frame_size(view: memoryview, *, max_size_bytes: int, what: str) -> None:
    """Raise CodecError(OVERSIZED) if the message is larger than `max_size_bytes`.

    Raises ValueError if `max_size_bytes` is not a positive integer.
    """
    if isinstance(max_size_bytes, bool) or not isinstance(max_size_bytes, int) or max_size_bytes <= 0:
        raise ValueError(f"max_size_bytes must be a positive integer, got {max_size_bytes!r}")
    if view.nbytes > max_size_bytes:
        raise CodecError(
            RejectReason.OVERSIZED,
            f"{what} is {view.nbytes} bytes, above the receiver's limit of {max_size_bytes}",
        )
