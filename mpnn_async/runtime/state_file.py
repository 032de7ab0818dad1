"""A partition's optimizer state kept in a local file instead of RAM, updated in row chunks.

Adam keeps two arrays per parameter and momentum one, so a partition's
optimizer state is one to two times its weights. With the state in a file,
a worker's resident memory for a step is its weights, its gradient
accumulators and a few chunk buffers. Each optimizer update reads a chunk of
rows of the state, applies `optim.update_rows` to it and writes it back;
those are the formulas of the in-memory update, in the same order.

The file is a private working copy, not a store object. It is created
unnamed (`tempfile.TemporaryFile`), so it disappears when it is closed or
the process dies, and it is filled from the stored version when a job
starts. What is committed to the store is a normal version: persisting
streams the state from this file into the version file, with its checksum
and atomic rename (see `store.archive.ArraySource`).

NOTE: the directory should be on a local disk. On a tmpfs the file's pages
are memory again, and on NFS every step reads and writes the whole state over
the network.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import weakref
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from mpnn_async.errors import StoreError
from mpnn_async.model.optim import (
    UPDATE_CHUNK_BYTES,
    OptimizerKind,
    OptimizerSpec,
    apply_update,
    check_step,
    new_scratch,
    row_chunks,
    update_rows,
)

__all__ = ["OptimizerStateFile", "apply_named_update"]

# Regions start at multiples of this, so row chunks map to whole pages.
_REGION_ALIGNMENT_BYTES = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class _Region:
    """One state array in the file: where it starts, its dtype and its shape."""

    offset: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else self.dtype.itemsize


class OptimizerStateFile:
    """The optimizer state of one partition, stored by (parameter name, state name) in one file.

    Parameter names are those of the store object (`W1`, `b1`, ...), state
    names those of `OptimizerSpec.state_names()`. A state array that does
    not exist yet reads as zeros, which is Adam's initial state.
    """

    def __init__(self, directory: str | os.PathLike[str], *, chunk_bytes: int = UPDATE_CHUNK_BYTES) -> None:
        try:
            self._file = tempfile.TemporaryFile(dir=directory, prefix="mpnn-optimizer-state-")
        except OSError as error:
            raise StoreError(
                f"failed to create an optimizer state file in {directory}: {error}; point "
                "--optimizer-state-dir at a writable local directory"
            ) from error
        # Closes the file when this object is collected, as when a worker drops an ended job.
        self._close = weakref.finalize(self, self._file.close)
        self.directory = Path(directory)
        self.chunk_bytes = chunk_bytes
        self._regions: dict[tuple[str, str], _Region] = {}
        # Arrays whose content was loaded or written; for momentum, a missing one starts as the gradient.
        self._initialised: set[tuple[str, str]] = set()
        self._size_bytes = 0

    def __repr__(self) -> str:
        return (
            f"<OptimizerStateFile dir={str(self.directory)!r} arrays={len(self._regions)} "
            f"size_bytes={self._size_bytes}>"
        )

    def close(self) -> None:
        self._close()

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    def names(self) -> list[tuple[str, str]]:
        """Return the (parameter, state) names of the arrays in the file, in creation order."""
        return list(self._regions)

    def load(self, name: str, state_name: str, stored_dtype: np.dtype[Any], shape: tuple[int, ...], chunks: Iterable[memoryview]) -> None:
        """Create array (`name`, `state_name`) from its bytes in C order, given in chunks."""
        region = self._region(name, state_name, np.dtype(stored_dtype), tuple(shape))
        written = 0
        for chunk in chunks:
            self._write(chunk, region.offset + written)
            written += chunk.nbytes
        if written != region.nbytes:
            raise StoreError(
                f"optimizer state {name}.{state_name}: got {written} bytes, expected {region.nbytes}"
            )
        self._initialised.add((name, state_name))

    def read(self, name: str, state_name: str) -> np.ndarray:
        """Return a whole state array as a new array in memory."""
        region = self._regions[(name, state_name)]
        array = np.empty(region.shape, dtype=region.dtype)
        self._read(_bytes_of(array), region.offset)
        return array

    def sources(self) -> dict[str, _RegionSource]:
        """Return an ArraySource per array, named `<parameter>.<state>` as in the store object."""
        return {
            f"{name}.{state_name}": _RegionSource(self, region)
            for (name, state_name), region in self._regions.items()
        }

    def apply_update(
        self, spec: OptimizerSpec, name: str, parameter: np.ndarray, gradient: np.ndarray, step: int
    ) -> None:
        """Update `parameter` in place and parameter `name`'s state in the file, one row chunk at a time.

        The numbers equal those of `optim.apply_update` with the state in memory.
        """
        check_step(step)
        state_names = spec.state_names()
        if not state_names:
            apply_update(spec, parameter, gradient, {}, step)
            return
        if gradient.shape != parameter.shape:
            raise ValueError(
                f"gradient shape {gradient.shape} does not match the parameter's {parameter.shape}"
            )
        rows = np.atleast_1d(parameter)
        gradient_rows = np.atleast_1d(np.asarray(gradient).astype(parameter.dtype, copy=False))
        regions = {
            state_name: self._region(name, state_name, parameter.dtype, parameter.shape)
            for state_name in state_names
        }
        # As torch.optim.SGD: the momentum buffer starts as the gradient on the first step.
        first_use = spec.kind is OptimizerKind.MOMENTUM and (
            step == 1 or (name, "momentum_buffer") not in self._initialised
        )
        scratch = new_scratch(rows, self.chunk_bytes)
        buffers = {state_name: np.empty_like(scratch[0]) for state_name in state_names}
        for chunk in row_chunks(rows, self.chunk_bytes):
            count = chunk.stop - chunk.start
            views = {state_name: buffer[:count] for state_name, buffer in buffers.items()}
            for state_name, view in views.items():
                region = regions[state_name]
                self._read(_bytes_of(view), region.offset + chunk.start * region.row_bytes)
            update_rows(
                spec,
                rows[chunk],
                gradient_rows[chunk],
                views,
                step,
                first_use=first_use,
                scratch=scratch,
            )
            for state_name, view in views.items():
                region = regions[state_name]
                self._write(_bytes_of(view), region.offset + chunk.start * region.row_bytes)
        self._initialised.update((name, state_name) for state_name in state_names)

    def _region(self, name: str, state_name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> _Region:
        """Return the region of an array, creating it (as zeros) if it does not exist."""
        region = self._regions.get((name, state_name))
        if region is not None:
            if region.dtype != dtype or region.shape != tuple(shape):
                raise StoreError(
                    f"optimizer state {name}.{state_name} is {region.dtype} {region.shape}, "
                    f"but its parameter is {dtype} {tuple(shape)}"
                )
            return region
        offset = -(-self._size_bytes // _REGION_ALIGNMENT_BYTES) * _REGION_ALIGNMENT_BYTES
        region = _Region(offset=offset, dtype=np.dtype(dtype), shape=tuple(shape))
        self._size_bytes = offset + region.nbytes
        # The file grows sparse: bytes never written read as zeros and take no disk space.
        self._map_error(os.ftruncate, self._file.fileno(), self._size_bytes)
        self._regions[(name, state_name)] = region
        return region

    def _read(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < buffer.nbytes:
            count = self._map_error(os.preadv, self._file.fileno(), [buffer[done:]], offset + done)
            if count == 0:
                raise StoreError(f"optimizer state file in {self.directory} ended at byte {offset + done}")
            done += count

    def _write(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < buffer.nbytes:
            done += self._map_error(os.pwritev, self._file.fileno(), [buffer[done:]], offset + done)

    def _map_error(self, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except OSError as error:
            raise StoreError(
                f"optimizer state file in {self.directory} failed: {error}; check the free space there"
            ) from error


class _RegionSource:
    """One state array of an OptimizerStateFile as an ArraySource, read in chunks."""

    def __init__(self, owner: OptimizerStateFile, region: _Region) -> None:
        self._owner = owner
        self._region = region

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._region.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._region.shape

    def chunks(self) -> Iterator[memoryview]:
        total = self._region.nbytes
        buffer = memoryview(bytearray(max(1, min(self._owner.chunk_bytes, total))))
        for start in range(0, total, buffer.nbytes):
            view = buffer[: min(buffer.nbytes, total - start)]
            self._owner._read(view, self._region.offset + start)
            yield view


def _bytes_of(array: np.ndarray) -> memoryview:
    """Return the bytes of a C-contiguous array as a writable memoryview."""
    return memoryview(array.reshape(-1).view(np.uint8))


def apply_named_update(
    spec: OptimizerSpec,
    state: MutableMapping[str, dict[str, np.ndarray]] | OptimizerStateFile,
    name: str,
    parameter: np.ndarray,
    gradient: np.ndarray,
    step: int,
) -> None:
    """Apply one optimizer step to parameter `name`, with its state in memory or in a file."""
    if isinstance(state, OptimizerStateFile):
        state.apply_update(spec, name, parameter, gradient, step)
    else:
        apply_update(spec, parameter, gradient, state.setdefault(name, {}), step)
