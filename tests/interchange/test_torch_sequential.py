"""The torch.nn.Sequential naming: state_dicts written with and without PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy

from mpnn_async.interchange import (
    Naming,
    export_file,
    import_file,
    torch_sequential_text,
)
from mpnn_async.model import OptimizerSpec, ReferenceTrainer
from mpnn_async.runtime.weights import load_parameters, prepare_partitions
from mpnn_async.store import ModelStore, Store
from tests.interchange.helpers import (
    assert_bit_equal,
    make_plan,
    random_parameters,
    sequential_tensors,
)

# Allowed difference between torch's forward pass and the reference's, per dtype:
# the same arithmetic in another order.
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def torch_sequential(torch, dtype):
    """The test network as a real torch module: 6 -> 7 tanh -> 5 gelu(tanh) -> 4."""
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 7),
        torch.nn.Tanh(),
        torch.nn.Linear(7, 5),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(5, 4),
    )
    return module.to(getattr(torch, dtype))


def test_sequential_text_describes_modules():
    assert torch_sequential_text(make_plan().spec) == (
        "Sequential(Linear(6, 7), Tanh(), Linear(7, 5), GELU(approximate='tanh'), Linear(5, 4))"
    )


def test_sequential_state_dict_via_safetensors(tmp_path):
    # The file a torch user writes with safetensors.torch.save_file(model.state_dict(), path),
    # here built with NumPy alone, for Sequential(Linear, Tanh, Dropout, Linear, GELU, Linear).
    plan = make_plan("float32")
    parameters = random_parameters(plan.spec)
    safetensors.numpy.save_file(sequential_tensors(parameters, (0, 3, 5)), tmp_path / "model.safetensors")
    model_store = ModelStore(Store.open(tmp_path / "store", create=True), "from-torch")

    result = import_file(model_store, plan, tmp_path / "model.safetensors")

    assert result.naming is Naming.SEQUENTIAL
    assert_bit_equal(load_parameters(model_store, plan), parameters)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exported_state_dict_loads_into_torch(dtype, tmp_path):
    torch = pytest.importorskip("torch")
    plan = make_plan(dtype)
    model_store = ModelStore(Store.open(tmp_path / "store", create=True), "net")
    prepare_partitions(model_store, plan)
    export_file(model_store, tmp_path / "net.pt")
    module = torch_sequential(torch, dtype)

    module.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))

    inputs = np.random.default_rng(2).standard_normal((9, 6)).astype(dtype)
    reference = ReferenceTrainer(plan.spec, OptimizerSpec.from_dict({}), parameters=load_parameters(model_store, plan))
    with torch.no_grad():
        outputs = module(torch.from_numpy(inputs)).numpy()
    assert outputs.dtype == np.dtype(dtype)
    np.testing.assert_allclose(outputs, reference.predict(inputs), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_state_dict_imports(dtype, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch_sequential(torch, dtype)
    torch.save(module.state_dict(), tmp_path / "trained.pth")
    plan = make_plan(dtype)
    model_store = ModelStore(Store.open(tmp_path / "store", create=True), "from-torch")

    import_file(model_store, plan, tmp_path / "trained.pth")

    state = module.state_dict()
    expected = [(state[f"{index}.weight"].numpy(), state[f"{index}.bias"].numpy()) for index in (0, 2, 4)]
    assert_bit_equal(load_parameters(model_store, plan), expected)
    inputs = np.random.default_rng(3).standard_normal((5, 6)).astype(dtype)
    reference = ReferenceTrainer(plan.spec, OptimizerSpec.from_dict({}), parameters=load_parameters(model_store, plan))
    with torch.no_grad():
        outputs = module(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(reference.predict(inputs), outputs, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
