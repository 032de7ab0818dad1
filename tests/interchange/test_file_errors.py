"""Unreadable files are rejected with the file named, and nothing in them is unpickled."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mpnn_async.errors import InvalidInputError
from mpnn_async.interchange import FileFormat, detect_format, read_tensors


class Canary:
    """Creates a file when unpickled, so a test can tell whether a reader unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_npz_object_array_not_unpickled(tmp_path):
    canary = tmp_path / "unpickled"
    np.savez(tmp_path / "evil.npz", **{"layers.1.weight": np.array([Canary(canary)], dtype=object)})

    with pytest.raises(InvalidInputError, match="cannot be read as an .npz archive without pickle"):
        read_tensors(tmp_path / "evil.npz", FileFormat.NPZ)

    assert not canary.exists()


def test_torch_pickled_object_not_built(tmp_path):
    torch = pytest.importorskip("torch")
    canary = tmp_path / "unpickled"
    torch.save({"0.weight": torch.zeros(2), "evil": Canary(canary)}, tmp_path / "evil.pt")

    with pytest.raises(InvalidInputError, match=r"weights_only=True \(UnpicklingError\)"):
        read_tensors(tmp_path / "evil.pt", FileFormat.TORCH)

    assert not canary.exists()


def test_torch_whole_module_rejected(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 2)), tmp_path / "module.pt")

    with pytest.raises(InvalidInputError, match=r"save the module's state_dict\(\), not the module"):
        read_tensors(tmp_path / "module.pt", FileFormat.TORCH)


def test_torch_nested_dict_rejected(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"model": {"0.weight": torch.zeros(2)}, "epoch": 3}, tmp_path / "checkpoint.pt")

    with pytest.raises(InvalidInputError, match="entry 'model' is a dict, not a tensor"):
        read_tensors(tmp_path / "checkpoint.pt", FileFormat.TORCH)


def test_torch_bfloat16_rejected(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"0.weight": torch.zeros(2, dtype=torch.bfloat16)}, tmp_path / "bf16.pt")

    with pytest.raises(InvalidInputError, match=r"'0.weight'.*torch.bfloat16.*\.float\(\)"):
        read_tensors(tmp_path / "bf16.pt", FileFormat.TORCH)


def test_npy_file_is_not_npz(tmp_path):
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")

    with pytest.raises(InvalidInputError, match="single .npy array, not an .npz archive"):
        read_tensors(tmp_path / "single.npz", FileFormat.NPZ)


@pytest.mark.parametrize("file_format", list(FileFormat))
def test_garbage_file_rejected(file_format, tmp_path):
    if file_format is FileFormat.TORCH:
        pytest.importorskip("torch")
    path = tmp_path / "garbage"
    path.write_bytes(b"this is not a weights file at all")

    with pytest.raises(InvalidInputError, match=f"'{path}' cannot be read"):
        read_tensors(path, file_format)


def test_safetensors_bfloat16_rejected(tmp_path):
    # A safetensors file is an 8-byte little-endian header size, a JSON header and the raw data.
    header = json.dumps({"0.weight": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)

    with pytest.raises(InvalidInputError, match="tensor '0.weight' .* has dtype BF16, which NumPy cannot hold"):
        read_tensors(path, FileFormat.SAFETENSORS)


def test_missing_file_named(tmp_path):
    with pytest.raises(InvalidInputError, match="weights file '.*nowhere.npz' not found"):
        read_tensors(tmp_path / "nowhere.npz", FileFormat.NPZ)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(InvalidInputError, match="is not a file"):
        read_tensors(tmp_path, FileFormat.NPZ)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("w.npz", "npz"), ("w.safetensors", "safetensors"), ("W.PT", "torch"), ("w.pth", "torch")],
)
def test_format_detected_from_extension(name, expected):
    assert detect_format(name) == expected


def test_unknown_extension_rejected():
    with pytest.raises(InvalidInputError, match=r"extension '\.bin'.*--format npz, safetensors or torch"):
        detect_format("pytorch_model.bin")


def test_unknown_format_option_rejected():
    with pytest.raises(InvalidInputError, match="unknown format 'onnx'"):
        detect_format("w.npz", "onnx")
