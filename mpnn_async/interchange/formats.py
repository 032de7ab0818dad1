"""Reading and writing named tensors as NumPy `.npz`, safetensors or PyTorch files.

Nothing here unpickles: `.npz` archives load with `allow_pickle=False`,
safetensors files are a JSON header and raw bytes, and PyTorch files load
with `torch.load(..., weights_only=True)`, which only rebuilds tensors and
plain containers. `safetensors` and `torch` are imported only when a file of
their format is read or written, so neither is needed otherwise.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mpnn_async.errors import InvalidInputError

__all__ = ["FileFormat", "TensorFile", "detect_format", "read_tensors", "write_tensors"]

log = logging.getLogger(__name__)


class FileFormat(enum.StrEnum):
    """A file format for named tensors."""

    # NumPy .npz archive: one .npy member per tensor.
    NPZ = "npz"
    # safetensors: a JSON header with names, dtypes and shapes, then raw little-endian bytes.
    SAFETENSORS = "safetensors"
    # PyTorch's torch.save zip archive holding a state_dict (needs torch).
    TORCH = "torch"


_EXTENSIONS = {
    ".npz": FileFormat.NPZ,
    ".safetensors": FileFormat.SAFETENSORS,
    ".pt": FileFormat.TORCH,
    ".pth": FileFormat.TORCH,
}
_SAFETENSORS_INSTALL = "install it with `pip install safetensors` (or the project's `interchange` extra)"
_TORCH_INSTALL = (
    "install PyTorch, or use a .safetensors file (`safetensors.torch.save_file(model.state_dict(), "
    "path)` writes one)"
)

# safetensors dtypes that safetensors.numpy can load; BF16 and the FP8 types have no NumPy dtype.
_NUMPY_SAFETENSORS_DTYPES = frozenset(
    ("F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL", "C64")
)


@dataclasses.dataclass(frozen=True, slots=True)
class TensorFile:
    """The tensors of a file by name, and its text metadata (safetensors only; else empty)."""

    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]


def detect_format(path: str | os.PathLike[str], file_format: str | None = None) -> FileFormat:
    """Return `file_format` (npz, safetensors or torch) if given, else the format of the file's extension."""
    if file_format is not None:
        try:
            return FileFormat(file_format)
        except ValueError:
            choices = ", ".join(member.value for member in FileFormat)
            raise InvalidInputError(f"unknown format {file_format!r}; use one of {choices}") from None
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise InvalidInputError(
            f"cannot tell the format of {os.fspath(path)!r} from its extension {suffix!r}; "
            f"name it {', '.join(_EXTENSIONS)}, or pass --format npz, safetensors or torch"
        )
    return _EXTENSIONS[suffix]


def read_tensors(path: str | os.PathLike[str], file_format: FileFormat) -> TensorFile:
    """Read every tensor of a file; raise InvalidInputError naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "not found"
        raise InvalidInputError(f"weights file {str(path)!r} {problem}; check the path")
    if file_format is FileFormat.NPZ:
        tensors = _read_npz(path)
        metadata: dict[str, str] = {}
    elif file_format is FileFormat.SAFETENSORS:
        tensors, metadata = _read_safetensors(path)
    else:
        tensors = _read_torch(path)
        metadata = {}
    log.debug("interchange.read path=%s format=%s tensors=%d", path, file_format, len(tensors))
    return TensorFile(tensors=tensors, metadata=metadata)


def write_tensors(
    path: str | os.PathLike[str],
    file_format: FileFormat,
    tensors: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `tensors` to `path`, replacing the file atomically; metadata goes to safetensors only."""
    arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    if file_format is FileFormat.NPZ:
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        data = buffer.getvalue()
    elif file_format is FileFormat.SAFETENSORS:
        data = _safetensors_module("write").save(arrays, metadata=dict(metadata or {}))
    else:
        data = _torch_bytes(arrays)
    _write_atomic(Path(path), data)
    log.debug("interchange.written path=%s format=%s size_bytes=%d", path, file_format, len(data))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    # A member holding an object array raises ValueError here instead of being unpickled.
    unreadable = (ValueError, OSError, EOFError, zipfile.BadZipFile)
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as error:
        raise _npz_error(path, error) from error
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InvalidInputError(
            f"{str(path)!r} is a single .npy array, not an .npz archive; save the tensors "
            "with numpy.savez"
        )
    try:
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except unreadable as error:
        raise _npz_error(path, error) from error


def _npz_error(path: Path, error: Exception) -> InvalidInputError:
    return InvalidInputError(f"{str(path)!r} cannot be read as an .npz archive without pickle: {error}")


def _safetensors_module(action: str) -> Any:
    try:
        import safetensors.numpy
    except ImportError:
        raise InvalidInputError(
            f"to {action} safetensors files, the safetensors package is needed; {_SAFETENSORS_INSTALL}"
        ) from None
    return safetensors.numpy


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    _safetensors_module("read")
    import safetensors

    tensors = {}
    try:
        with safetensors.safe_open(path, framework="np") as file:
            metadata = dict(file.metadata() or {})
            for name in file.keys():
                dtype = file.get_slice(name).get_dtype()
                if dtype not in _NUMPY_SAFETENSORS_DTYPES:
                    raise InvalidInputError(
                        f"tensor {name!r} in {str(path)!r} has dtype {dtype}, which NumPy cannot "
                        "hold; convert the tensors to float32 before saving"
                    )
                tensors[name] = file.get_tensor(name)
    except (safetensors.SafetensorError, OSError) as error:
        raise InvalidInputError(f"{str(path)!r} cannot be read as a safetensors file: {error}") from error
    return tensors, metadata


def _import_torch(action: str) -> Any:
    try:
        import torch
    except ImportError:
        raise InvalidInputError(f"to {action} PyTorch files, PyTorch is needed; {_TORCH_INSTALL}") from None
    return torch


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    torch = _import_torch("read")
    try:
        # weights_only=True rebuilds only tensors and plain containers; any other
        # object in the pickle stream is rejected instead of constructed.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # Malformed input makes torch.load raise UnpicklingError, RuntimeError,
        # IndexError and more (torch 2.13), with no common base class.
        # NOTE: torch's own message suggests weights_only=False, which would run
        # arbitrary code from the file, so only the error type is repeated here.
        raise InvalidInputError(
            f"{str(path)!r} cannot be read by torch.load with weights_only=True "
            f"({type(error).__name__}); save the module's state_dict(), not the module, "
            "with torch.save"
        ) from error
    if not isinstance(state, Mapping):
        raise InvalidInputError(
            f"{str(path)!r} holds a {type(state).__name__}, not a state_dict; save "
            "`model.state_dict()` with torch.save"
        )
    tensors = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise InvalidInputError(
                f"{str(path)!r} entry {name!r} is a {type(value).__name__}, not a tensor; save "
                "the state_dict of a torch.nn.Sequential alone, not a dict that contains it"
            )
        if value.dtype == torch.bfloat16:
            raise InvalidInputError(
                f"tensor {name!r} in {str(path)!r} has dtype torch.bfloat16, which NumPy cannot "
                "hold; convert it with .float() before saving"
            )
        tensors[name] = value.detach().cpu().numpy()
    return tensors


def _torch_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    torch = _import_torch("write")
    # torch.tensor copies, so the state_dict owns writable memory of the same dtype.
    state = {name: torch.tensor(array) for name, array in arrays.items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise InvalidInputError(
            f"failed to write {str(path)!r}: {error.strerror}; choose a writable path"
        ) from error
