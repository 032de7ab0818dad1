"""Every format and dtype survives file -> store -> file bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy

from mpnn_async.interchange import (
    FileFormat,
    Naming,
    export_file,
    import_file,
    read_tensors,
    write_tensors,
)
from mpnn_async.runtime.weights import load_parameters
from mpnn_async.store import ModelStore, Store
from tests.interchange.helpers import (
    assert_bit_equal,
    assert_tensors_bit_equal,
    canonical_tensors,
    make_plan,
    random_parameters,
    sequential_tensors,
)

EXTENSIONS = {FileFormat.NPZ: "npz", FileFormat.SAFETENSORS: "safetensors", FileFormat.TORCH: "pt"}


def write_with_library(path, file_format, tensors):
    """Write a file with the format's own library, independently of mpnn_async."""
    if file_format is FileFormat.NPZ:
        np.savez(path, **tensors)
    elif file_format is FileFormat.SAFETENSORS:
        safetensors.numpy.save_file(tensors, path)
    else:
        torch = pytest.importorskip("torch")
        torch.save({name: torch.from_numpy(array.copy()) for name, array in tensors.items()}, path)


def read_with_library(path, file_format):
    if file_format is FileFormat.NPZ:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if file_format is FileFormat.SAFETENSORS:
        return safetensors.numpy.load_file(path)
    torch = pytest.importorskip("torch")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: tensor.numpy() for name, tensor in state.items()}


@pytest.mark.parametrize("naming", list(Naming))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("file_format", list(FileFormat))
def test_file_store_file_round_trip(file_format, dtype, naming, tmp_path):
    if file_format is FileFormat.TORCH:
        pytest.importorskip("torch")
    plan = make_plan(dtype)
    parameters = random_parameters(plan.spec)
    tensors = canonical_tensors(parameters) if naming is Naming.LAYERS else sequential_tensors(parameters)
    source = tmp_path / f"source.{EXTENSIONS[file_format]}"
    write_with_library(source, file_format, tensors)
    model_store = ModelStore(Store.open(tmp_path / "store", create=True), "imported")

    imported = import_file(model_store, plan, source)

    assert imported.file_format is file_format
    assert imported.naming is naming
    assert_bit_equal(load_parameters(model_store, plan), parameters)

    target = tmp_path / f"target.{EXTENSIONS[file_format]}"
    exported = export_file(model_store, target, naming=naming)

    assert exported.stored.step == 0
    assert_tensors_bit_equal(read_with_library(target, file_format), tensors)


@pytest.mark.parametrize("file_format", [FileFormat.NPZ, FileFormat.SAFETENSORS])
def test_writer_reader_round_trip(file_format, tmp_path):
    parameters = random_parameters(make_plan("float32").spec)
    tensors = canonical_tensors(parameters)
    # A transposed view is not C-contiguous; the writer must copy it, not its buffer.
    tensors["transposed"] = parameters[0][0].T
    path = tmp_path / f"weights.{EXTENSIONS[file_format]}"

    write_tensors(path, file_format, tensors, metadata={"note": "kept"})
    read = read_tensors(path, file_format)

    assert_tensors_bit_equal(read.tensors, {name: np.ascontiguousarray(array) for name, array in tensors.items()})
    assert read.metadata == ({"note": "kept"} if file_format is FileFormat.SAFETENSORS else {})
    assert not list(tmp_path.glob(".*tmp*"))


def test_big_endian_npz_imports_by_value(tmp_path):
    plan = make_plan("float64")
    parameters = random_parameters(plan.spec)
    tensors = {name: array.astype(">f8") for name, array in canonical_tensors(parameters).items()}
    np.savez(tmp_path / "big.npz", **tensors)
    model_store = ModelStore(Store.open(tmp_path / "store", create=True), "big")

    import_file(model_store, plan, tmp_path / "big.npz")

    assert_bit_equal(load_parameters(model_store, plan), parameters)


def test_safetensors_export_records_spec_and_step(tmp_path):
    import json

    plan = make_plan("float32")
    model_store = ModelStore(Store.open(tmp_path / "store", create=True), "meta")
    np.savez(tmp_path / "w.npz", **canonical_tensors(random_parameters(plan.spec)))
    import_file(model_store, plan, tmp_path / "w.npz")

    export_file(model_store, tmp_path / "out.safetensors")

    metadata = read_tensors(tmp_path / "out.safetensors", FileFormat.SAFETENSORS).metadata
    assert json.loads(metadata["mpnn.model"]) == plan.spec.to_dict()
    assert metadata["mpnn.step"] == "0"


@pytest.mark.parametrize("given", ["npz", "safetensors"])
def test_format_option_overrides_extension(given, tmp_path):
    plan = make_plan("float64")
    parameters = random_parameters(plan.spec)
    path = tmp_path / "weights.bin"
    write_tensors(path, FileFormat(given), canonical_tensors(parameters))
    model_store = ModelStore(Store.open(tmp_path / "store", create=True), "bin")

    result = import_file(model_store, plan, path, file_format=given)

    assert result.file_format == given
    assert_bit_equal(load_parameters(model_store, plan), parameters)
