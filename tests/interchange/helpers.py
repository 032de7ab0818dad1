"""Models, plans and weights shared by the interchange tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpnn_async.model.reference import Parameters
from mpnn_async.model.spec import NetworkSpec
from mpnn_async.planning import Plan, build_plan
from tests.runtime.jobs import MODEL, PLANS

# Linear module indices of Sequential(Linear, Tanh, Linear, GELU, Linear): the
# activations sit at 1 and 3 and have no parameters.
SEQUENTIAL_MODULES = (0, 2, 4)


def model_table(dtype: str) -> dict[str, Any]:
    """The runtime tests' 6-7-5-4 network (tanh, gelu, identity) in `dtype`."""
    return {**MODEL, "dtype": dtype}


def make_plan(dtype: str = "float64", plan: str = "mixed") -> Plan:
    return build_plan(NetworkSpec.from_dict(model_table(dtype)), PLANS[plan])


def random_parameters(spec: NetworkSpec, *, seed: int = 1, extreme_values: bool = True) -> Parameters:
    """Random weights unlike the spec's seeded init.

    With `extreme_values`, each layer also contains -0.0, the smallest subnormal
    and the largest finite value, bit patterns that a lossy copy would change.
    """
    rng = np.random.default_rng(seed)
    finfo = np.finfo(spec.np_dtype)
    parameters = []
    for layer in range(1, spec.depth + 1):
        weights = rng.standard_normal(spec.weight_shape(layer)).astype(spec.np_dtype)
        biases = rng.standard_normal(spec.width(layer)).astype(spec.np_dtype)
        if extreme_values:
            weights[0, 0] = -0.0
            weights[-1, -1] = finfo.smallest_subnormal
            biases[0] = finfo.max
        parameters.append((weights, biases))
    return parameters


def canonical_tensors(parameters: Parameters) -> dict[str, np.ndarray]:
    tensors = {}
    for layer, (weights, biases) in enumerate(parameters, start=1):
        tensors[f"layers.{layer}.weight"] = weights
        tensors[f"layers.{layer}.bias"] = biases
    return tensors


def sequential_tensors(parameters: Parameters, modules: tuple[int, ...] = SEQUENTIAL_MODULES) -> dict[str, np.ndarray]:
    tensors = {}
    for module, (weights, biases) in zip(modules, parameters, strict=True):
        tensors[f"{module}.weight"] = weights
        tensors[f"{module}.bias"] = biases
    return tensors


def assert_bit_equal(actual: Parameters, expected: Parameters) -> None:
    assert len(actual) == len(expected)
    for layer, ((w_actual, b_actual), (w_expected, b_expected)) in enumerate(zip(actual, expected), start=1):
        assert w_actual.dtype == w_expected.dtype, f"layer {layer} weight dtype"
        assert b_actual.dtype == b_expected.dtype, f"layer {layer} bias dtype"
        assert w_actual.shape == w_expected.shape, f"layer {layer} weight shape"
        assert w_actual.tobytes() == w_expected.tobytes(), f"layer {layer} weight bytes"
        assert b_actual.tobytes() == b_expected.tobytes(), f"layer {layer} bias bytes"


def assert_tensors_bit_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        assert actual[name].shape == array.shape, name
        assert actual[name].tobytes() == array.tobytes(), name
