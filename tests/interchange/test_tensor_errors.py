"""Tensors that do not fit the model are rejected, naming the layer and the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.errors import InvalidInputError
from mpnn_async.interchange import Naming, parameters_from_tensors
from tests.interchange.helpers import (
    assert_bit_equal,
    canonical_tensors,
    make_plan,
    random_parameters,
    sequential_tensors,
)

SPEC = make_plan("float64").spec  # 6 -> 7 (tanh) -> 5 (gelu) -> 4 (identity)


def tensors(**changes):
    """The canonical tensors of a valid network, with `changes` (None removes a name)."""
    result = canonical_tensors(random_parameters(SPEC, extreme_values=False))
    for key, value in changes.items():
        name = key.replace("_", ".")
        if value is None:
            del result[name]
        else:
            result[name] = value
    return result


def rejected(tensor_map, *, cast=False):
    with pytest.raises(InvalidInputError) as caught:
        parameters_from_tensors(SPEC, tensor_map, cast=cast)
    return str(caught.value)


def test_weight_shape_mismatch_names_layer():
    message = rejected(tensors(layers_2_weight=np.zeros((5, 8))))

    assert message.startswith("layer 2: weight shape (5, 8) does not match the model's (5, 7)")
    assert "'layers.2.weight'" in message


def test_transposed_weight_gets_hint():
    message = rejected(tensors(layers_1_weight=np.zeros((6, 7))))

    assert message.startswith("layer 1: weight shape (6, 7) does not match the model's (7, 6)")
    assert "transposed" in message


def test_bias_shape_mismatch_names_layer():
    message = rejected(tensors(layers_3_bias=np.zeros(5)))

    assert message.startswith("layer 3: bias shape (5,) does not match the model's (4,)")


def test_dtype_mismatch_names_layer_and_fix():
    message = rejected(tensors(layers_1_weight=np.zeros((7, 6), dtype=np.float32)))

    assert message.startswith("layer 1: weight dtype float32 does not match the model's float64")
    assert "--cast" in message


def test_cast_converts_other_precision():
    narrow = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float16)

    _, parameters = parameters_from_tensors(SPEC, tensors(layers_1_weight=narrow), cast=True)

    assert parameters[0][0].dtype == np.float64
    assert parameters[0][0].tobytes() == narrow.astype(np.float64).tobytes()


def test_cast_overflow_is_rejected():
    spec32 = make_plan("float32").spec
    too_large = np.full(5, 1e300)
    tensor_map = canonical_tensors(random_parameters(SPEC, extreme_values=False))
    tensor_map["layers.2.bias"] = too_large

    with pytest.raises(InvalidInputError, match=r"^layer 2: bias has 5 values that are NaN or infinite after conversion to float32"):
        parameters_from_tensors(spec32, tensor_map, cast=True)


def test_non_finite_values_name_layer():
    weights = np.ones((4, 5))
    weights[1, 2] = np.nan
    weights[3, 0] = -np.inf

    message = rejected(tensors(layers_3_weight=weights))

    assert message.startswith("layer 3: weight has 2 values that are NaN or infinite")


def test_integer_dtype_rejected_even_with_cast():
    message = rejected(tensors(layers_1_bias=np.zeros(7, dtype=np.int64)), cast=True)

    assert message.startswith("layer 1: bias dtype int64 is not a floating-point type")


def test_missing_and_extra_tensors_listed():
    message = rejected(tensors(layers_3_bias=None, layers_4_weight=np.zeros((1, 4)), optimizer_step=np.zeros(1)))

    assert "missing tensors 'layers.3.bias'" in message
    assert "unexpected tensors 'layers.4.weight', 'optimizer.step'" in message
    assert "3 dense layers" in message


def test_layer_zero_is_unexpected():
    message = rejected(tensors(layers_0_weight=np.zeros((7, 6))))

    assert "unexpected tensors 'layers.0.weight'" in message


def test_mixed_naming_rejected():
    tensor_map = tensors()
    tensor_map["0.weight"] = tensor_map.pop("layers.1.weight")

    assert "mixes canonical names" in rejected(tensor_map)


def test_unknown_names_rejected():
    message = rejected({"fc1.w": np.zeros((7, 6)), "fc1.b": np.zeros(7)})

    assert "no tensor named like 'layers.1.weight' or '0.weight'" in message
    assert "'fc1.b', 'fc1.w'" in message


def test_wrapped_sequential_names_get_hint():
    parameters = random_parameters(SPEC, extreme_values=False)
    tensor_map = {f"net.{name}": array for name, array in sequential_tensors(parameters).items()}

    assert "model.net.state_dict()" in rejected(tensor_map)


def test_sequential_with_gaps_maps_in_order():
    # Sequential(Linear, Tanh, Dropout, Linear, GELU, Linear): Linear modules 0, 3, 5.
    parameters = random_parameters(SPEC)

    naming, imported = parameters_from_tensors(SPEC, sequential_tensors(parameters, (0, 3, 5)))

    assert naming is Naming.SEQUENTIAL
    assert_bit_equal(imported, parameters)


def test_sequential_module_count_mismatch():
    parameters = random_parameters(SPEC, extreme_values=False)
    tensor_map = sequential_tensors(parameters)
    tensor_map["6.weight"] = np.zeros((2, 4))
    tensor_map["6.bias"] = np.zeros(2)

    message = rejected(tensor_map)

    assert "4 torch.nn.Sequential modules with parameters (indices 0, 2, 4, 6)" in message
    assert "3 dense layers" in message


def test_sequential_shape_mismatch_names_module():
    parameters = random_parameters(SPEC, extreme_values=False)
    tensor_map = sequential_tensors(parameters, (0, 3, 5))
    tensor_map["3.weight"] = np.zeros((5, 100))

    message = rejected(tensor_map)

    assert message.startswith("layer 2 (module 3): weight shape (5, 100) does not match the model's (5, 7)")


def test_sequential_missing_bias_names_layer():
    tensor_map = sequential_tensors(random_parameters(SPEC, extreme_values=False))
    del tensor_map["2.bias"]

    message = rejected(tensor_map)

    assert message.startswith("layer 2 (module 2): bias '2.bias' is missing")
    assert "bias=True" in message


def test_sequential_buffers_are_unexpected():
    tensor_map = sequential_tensors(random_parameters(SPEC, extreme_values=False))
    tensor_map["1.running_mean"] = np.zeros(7)

    assert "unexpected tensors '1.running_mean'" in rejected(tensor_map)
