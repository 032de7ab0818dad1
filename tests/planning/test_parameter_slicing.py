"""Cutting parameters by partition and stitching them back."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.errors import InvalidInputError
from mpnn_async.model import activations
from mpnn_async.planning import assemble_parameters, load_plan, slice_parameters

from .plans import CONFIGS


@pytest.fixture(params=["tiny.toml", "digits.toml", "mnist.toml"])
def plan(request):
    return load_plan(CONFIGS / request.param)


def slices_of(plan, params):
    return {name: slice_parameters(plan, name, params) for name in plan.partitions}


def test_slice_then_assemble_round_trip(plan):
    params = plan.spec.init_parameters()
    rebuilt = assemble_parameters(plan, slices_of(plan, params))
    assert len(rebuilt) == plan.depth
    for (weights, biases), (new_weights, new_biases) in zip(params, rebuilt, strict=True):
        assert new_weights.dtype == plan.spec.np_dtype
        np.testing.assert_array_equal(new_weights, weights)
        np.testing.assert_array_equal(new_biases, biases)


def test_slices_hold_owned_rows():
    plan = load_plan(CONFIGS / "tiny.toml")
    rng = np.random.default_rng(3)
    params = [
        (rng.standard_normal(shape), rng.standard_normal(shape[0]))
        for shape in (plan.spec.weight_shape(layer) for layer in range(1, 4))
    ]
    cut = slice_parameters(plan, "a", params)
    assert sorted(cut) == [1, 3]
    weights, biases = cut[1]
    np.testing.assert_array_equal(weights, params[0][0][[0, 2, 4]])
    np.testing.assert_array_equal(biases, params[0][1][[0, 2, 4]])
    assert cut[3][0].shape == (1, 5)


def test_slices_are_copies():
    plan = load_plan(CONFIGS / "tiny.toml")
    params = plan.spec.init_parameters()
    original = params[0][0].copy()
    cut = slice_parameters(plan, "b", params)
    cut[1][0][:] = 99.0
    np.testing.assert_array_equal(params[0][0], original)


def test_partition_forward_equals_full_forward():
    """Each owner computes its columns from the full input; together they give a[l]."""
    plan = load_plan(CONFIGS / "tiny.toml")
    params = plan.spec.init_parameters()
    slices = slices_of(plan, params)
    rows = np.random.default_rng(0).standard_normal((7, plan.spec.width(0)))

    full = rows
    split = rows
    for layer in range(1, plan.depth + 1):
        weights, biases = params[layer - 1]
        activation = plan.spec.activation(layer)
        full = activations.apply(activation, full @ weights.T + biases)
        assembled = np.zeros((rows.shape[0], plan.spec.width(layer)))
        for name in plan.owners(layer):
            w_rows, b_rows = slices[name][layer]
            assembled[:, plan.neurons(name, layer)] = activations.apply(
                activation, split @ w_rows.T + b_rows
            )
        split = assembled
        np.testing.assert_allclose(split, full, rtol=0, atol=1e-12)


def test_slice_rejects_wrong_shapes():
    plan = load_plan(CONFIGS / "tiny.toml")
    params = plan.spec.init_parameters()
    with pytest.raises(InvalidInputError, match="has 2 layers"):
        slice_parameters(plan, "a", params[:2])
    bad = list(params)
    bad[1] = (np.zeros((5, 7)), bad[1][1])
    with pytest.raises(
        InvalidInputError, match=r"layer 2: W has shape \(5, 7\), expected \(5, 6\)"
    ):
        slice_parameters(plan, "a", bad)


def test_slice_rejects_unknown_partition():
    plan = load_plan(CONFIGS / "tiny.toml")
    with pytest.raises(InvalidInputError, match="unknown partition 'z'"):
        slice_parameters(plan, "z", plan.spec.init_parameters())


def test_assemble_rejects_missing_partition():
    plan = load_plan(CONFIGS / "tiny.toml")
    slices = slices_of(plan, plan.spec.init_parameters())
    del slices["c"]
    with pytest.raises(InvalidInputError, match="slices of partition 'c' are missing"):
        assemble_parameters(plan, slices)


def test_assemble_rejects_unknown_partition():
    plan = load_plan(CONFIGS / "tiny.toml")
    slices = slices_of(plan, plan.spec.init_parameters())
    slices["z"] = {}
    with pytest.raises(InvalidInputError, match="partition 'z'"):
        assemble_parameters(plan, slices)


def test_assemble_rejects_wrong_layers():
    plan = load_plan(CONFIGS / "tiny.toml")
    slices = slices_of(plan, plan.spec.init_parameters())
    slices["a"] = {1: slices["a"][1]}
    with pytest.raises(InvalidInputError, match=r"gave layers \[1\] but owns layers \[1, 3\]"):
        assemble_parameters(plan, slices)


def test_assemble_rejects_wrong_row_count():
    plan = load_plan(CONFIGS / "tiny.toml")
    slices = slices_of(plan, plan.spec.init_parameters())
    weights, biases = slices["c"][2]
    slices["c"][2] = (weights[:2], biases[:2])
    with pytest.raises(InvalidInputError, match="partition 'c' layer 2: W has shape"):
        assemble_parameters(plan, slices)
