"""Kernels on subsets of a layer's neurons against the whole layer and the reference."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mpnn_async.model import Activation, Loss, NetworkSpec, OptimizerKind, OptimizerSpec
from mpnn_async.model.kernels import (
    GRADIENT_CHUNK_BYTES,
    WeightGradient,
    backward,
    backward_factored,
    delta_from_output_gradient,
    forward,
)
from mpnn_async.model.losses import loss_and_gradient
from mpnn_async.model.optim import apply_update
from mpnn_async.model.reference import Gradients, Parameters

from .nets import make_batch, make_trainer, small_spec

WIDTH = 9
INPUT_WIDTH = 6
ROWS = 5
# Neuron subsets S of one layer: single neurons, non-contiguous and unsorted
# index lists, a contiguous block and the whole layer.
# A product over a subset of rows may take a different BLAS path than the whole
# matrix (a matrix-vector product for one row), so the last bits may differ.
CLOSE = {"rtol": 1e-13, "atol": 1e-14}
SUBSETS = [[0], [8], [4], [0, 3, 7], [7, 2, 5], [1, 2, 3, 4], [8, 0], list(range(WIDTH))]


def _random_layer(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(WIDTH, INPUT_WIDTH))
    biases = rng.normal(size=WIDTH)
    inputs = rng.normal(size=(ROWS, INPUT_WIDTH))
    return weights, biases, inputs


def _random_partition(rng: np.random.Generator, width: int, groups: int) -> list[np.ndarray]:
    """Split range(width) into `groups` non-empty sets of shuffled, non-contiguous indices."""
    order = rng.permutation(width)
    cuts = np.sort(rng.choice(np.arange(1, width), size=groups - 1, replace=False))
    return [np.array(part) for part in np.split(order, cuts)]


def _subset_cases(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    random_subsets = [
        sorted(rng.choice(WIDTH, size=size, replace=False).tolist()) for size in (2, 5, 7)
    ]
    return SUBSETS + random_subsets


@pytest.mark.parametrize("activation", list(Activation))
def test_forward_on_rows_equals_columns(activation: Activation) -> None:
    weights, biases, inputs = _random_layer(0)
    full_z, full_a = forward(weights, biases, inputs, activation)

    for subset in _subset_cases(1):
        z, a = forward(weights[subset], biases[subset], inputs, activation)

        assert z.shape == (ROWS, len(subset))
        np.testing.assert_allclose(z, full_z[:, subset], **CLOSE, err_msg=f"{subset}")
        np.testing.assert_allclose(a, full_a[:, subset], **CLOSE, err_msg=f"{subset}")


def test_forward_is_affine_then_activation() -> None:
    weights, biases, inputs = _random_layer(2)

    z, a = forward(weights, biases, inputs, Activation.TANH)

    np.testing.assert_allclose(z, inputs @ weights.T + biases, rtol=1e-14)
    np.testing.assert_allclose(a, np.tanh(z), rtol=1e-15)


@pytest.mark.parametrize("activation", list(Activation))
def test_backward_on_rows_equals_rows(activation: Activation) -> None:
    weights, biases, inputs = _random_layer(3)
    z, _ = forward(weights, biases, inputs, activation)
    output_gradient = np.random.default_rng(4).normal(size=(ROWS, WIDTH))
    delta = delta_from_output_gradient(output_gradient, z, activation)
    full_dw, full_db, _ = backward(weights, delta, inputs)

    for subset in _subset_cases(5):
        sub_delta = delta_from_output_gradient(output_gradient[:, subset], z[:, subset], activation)
        dw, db, _ = backward(weights[subset], sub_delta, inputs)

        np.testing.assert_array_equal(sub_delta, delta[:, subset], err_msg=f"{subset}")
        np.testing.assert_allclose(dw, full_dw[subset], **CLOSE, err_msg=f"{subset}")
        np.testing.assert_allclose(db, full_db[subset], **CLOSE, err_msg=f"{subset}")


def test_backward_full_layer_formulas() -> None:
    weights, _, inputs = _random_layer(6)
    delta = np.random.default_rng(7).normal(size=(ROWS, WIDTH))

    dw, db, input_gradient = backward(weights, delta, inputs)
    _, _, skipped = backward(weights, delta, inputs, need_input_gradient=False)

    np.testing.assert_allclose(dw, delta.T @ inputs, rtol=1e-14)
    np.testing.assert_allclose(db, delta.sum(axis=0), rtol=1e-14)
    np.testing.assert_allclose(input_gradient, delta @ weights, rtol=1e-14)
    assert skipped is None


@pytest.mark.parametrize("groups", [1, 2, 3, 5, WIDTH])
def test_partial_input_gradients_sum_to_full(groups: int) -> None:
    weights, _, inputs = _random_layer(8)
    delta = np.random.default_rng(9).normal(size=(ROWS, WIDTH))
    partition = _random_partition(np.random.default_rng(groups), WIDTH, groups)

    partials = [backward(weights[part], delta[:, part], inputs)[2] for part in partition]

    assert sorted(np.concatenate(partition).tolist()) == list(range(WIDTH))
    for partial in partials:
        assert partial.shape == (ROWS, INPUT_WIDTH)
    np.testing.assert_allclose(sum(partials), delta @ weights, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("loss", list(Loss))
@pytest.mark.parametrize("activation", list(Activation))
def test_partitioned_network_matches_reference(activation: Activation, loss: Loss) -> None:
    spec = small_spec(activation, loss, widths=(4, 7, 6, 5))
    trainer = make_trainer(spec)
    inputs, targets = make_batch(spec, ROWS, seed=11)
    rng = np.random.default_rng(12)
    partitions = [_random_partition(rng, spec.width(layer), 3) for layer in range(1, 4)]

    grads = _partitioned_gradients(trainer.parameters, partitions, spec, inputs, targets)
    _, expected = trainer.gradients(inputs, targets)

    for layer, ((dw, db), (ref_dw, ref_db)) in enumerate(zip(grads, expected), start=1):
        np.testing.assert_allclose(dw, ref_dw, rtol=1e-12, atol=1e-14, err_msg=f"layer {layer}")
        np.testing.assert_allclose(db, ref_db, rtol=1e-12, atol=1e-14, err_msg=f"layer {layer}")


def _partitioned_gradients(
    parameters: Parameters,
    partitions: list[list[np.ndarray]],
    spec: NetworkSpec,
    inputs: np.ndarray,
    targets: np.ndarray,
) -> Gradients:
    """Run forward and backward the way partitions do: each owner sees only its rows of W."""
    activations = [inputs]
    pre_activations = []
    for layer, ((weights, biases), owners) in enumerate(zip(parameters, partitions), start=1):
        z = np.empty((inputs.shape[0], spec.width(layer)))
        a = np.empty_like(z)
        for rows in owners:
            z[:, rows], a[:, rows] = forward(
                weights[rows], biases[rows], activations[-1], spec.activation(layer)
            )
        pre_activations.append(z)
        activations.append(a)

    _, upstream = loss_and_gradient(spec.loss, activations[-1], targets)
    grads: Gradients = []
    for layer in range(spec.depth, 0, -1):
        weights = parameters[layer - 1][0]
        dw = np.empty_like(weights)
        db = np.empty(spec.width(layer))
        next_upstream = np.zeros_like(activations[layer - 1])
        for rows in partitions[layer - 1]:
            delta = delta_from_output_gradient(
                upstream[:, rows], pre_activations[layer - 1][:, rows], spec.activation(layer)
            )
            dw[rows], db[rows], partial = backward(
                weights[rows], delta, activations[layer - 1], need_input_gradient=layer > 1
            )
            if partial is not None:
                next_upstream += partial
        grads.append((dw, db))
        upstream = next_upstream
    grads.reverse()
    return grads


OPTIMIZERS = [
    OptimizerSpec(kind=OptimizerKind.SGD, learning_rate=0.1),
    OptimizerSpec(kind=OptimizerKind.SGD, learning_rate=0.1, weight_decay=0.05),
    OptimizerSpec(kind=OptimizerKind.MOMENTUM, learning_rate=0.1, momentum=0.8),
    OptimizerSpec(kind=OptimizerKind.MOMENTUM, learning_rate=0.1, weight_decay=0.05),
    OptimizerSpec(kind=OptimizerKind.ADAM, learning_rate=0.01),
    OptimizerSpec(kind=OptimizerKind.ADAM, learning_rate=0.01, weight_decay=0.05),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: f"{o.kind}-wd{o.weight_decay}")
def test_partitioned_updates_bit_identical(optimizer: OptimizerSpec, dtype: type) -> None:
    rng = np.random.default_rng(13)
    whole = rng.normal(size=(WIDTH, INPUT_WIDTH)).astype(dtype)
    partition = _random_partition(rng, WIDTH, 4)
    pieces = [whole[rows].copy() for rows in partition]
    whole_state: dict[str, np.ndarray] = {}
    piece_states: list[dict[str, np.ndarray]] = [{} for _ in partition]

    for step in range(1, 6):
        gradient = rng.normal(size=whole.shape).astype(dtype)
        apply_update(optimizer, whole, gradient, whole_state, step)
        for rows, piece, state in zip(partition, pieces, piece_states):
            apply_update(optimizer, piece, gradient[rows], state, step)

    assembled = np.empty_like(whole)
    for rows, piece in zip(partition, pieces):
        assembled[rows] = piece
    assert assembled.dtype == dtype
    np.testing.assert_array_equal(assembled, whole)
    for name in optimizer.state_names():
        for rows, state in zip(partition, piece_states):
            np.testing.assert_array_equal(state[name], whole_state[name][rows], err_msg=name)


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: f"{o.kind}-wd{o.weight_decay}")
def test_partitioned_bias_updates_bit_identical(optimizer: OptimizerSpec) -> None:
    rng = np.random.default_rng(14)
    whole = rng.normal(size=WIDTH)
    partition = _random_partition(rng, WIDTH, 3)
    pieces = [whole[rows].copy() for rows in partition]
    whole_state: dict[str, np.ndarray] = {}
    piece_states: list[dict[str, np.ndarray]] = [{} for _ in partition]

    for step in range(1, 4):
        gradient = rng.normal(size=WIDTH)
        apply_update(optimizer, whole, gradient, whole_state, step)
        for rows, piece, state in zip(partition, pieces, piece_states):
            apply_update(optimizer, piece, gradient[rows], state, step)

    for rows, piece in zip(partition, pieces):
        np.testing.assert_array_equal(piece, whole[rows])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_factors_equal_product(dtype: type) -> None:
    rng = np.random.default_rng(21)
    # 300 rows of output: several chunks of GRADIENT_CHUNK_BYTES when rows are 4 KiB or more.
    delta = rng.normal(size=(16, 300)).astype(dtype)
    inputs = rng.normal(size=(16, 1100)).astype(dtype)
    product = delta.T @ inputs
    factored = WeightGradient(delta, inputs)
    total = np.ones_like(product)

    factored.add_to(total)

    assert factored.shape == (300, 1100)
    np.testing.assert_allclose(factored.to_array(), product, rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(total, product + 1, rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_weight_gradient_rejects_other_shape() -> None:
    factored = WeightGradient(np.ones((2, 3)), np.ones((2, 4)))

    with pytest.raises(ValueError, match=r"shape \(3, 4\) cannot be added to \(4, 3\)"):
        factored.add_to(np.zeros((4, 3)))


def test_weight_gradient_add_allocates_one_chunk() -> None:
    rows = 2048
    delta = np.full((8, rows), 0.5)
    inputs = np.full((8, 1024), 2.0)
    total = np.zeros((rows, 1024))  # 16 MiB

    tracemalloc.start()
    try:
        WeightGradient(delta, inputs).add_to(total)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak_bytes <= GRADIENT_CHUNK_BYTES + (64 << 10), f"peak {peak_bytes} bytes"
    np.testing.assert_array_equal(total, np.full((rows, 1024), 8.0))


def test_backward_factored_matches_backward() -> None:
    rng = np.random.default_rng(22)
    weights = rng.normal(size=(WIDTH, INPUT_WIDTH))
    delta = rng.normal(size=(ROWS, WIDTH))
    inputs = rng.normal(size=(ROWS, INPUT_WIDTH))

    weight_gradient, bias_gradient, input_gradient = backward(weights, delta, inputs)
    factored, factored_bias, factored_input = backward_factored(weights, delta, inputs)

    np.testing.assert_array_equal(factored.to_array(), weight_gradient)
    np.testing.assert_array_equal(factored_bias, bias_gradient)
    np.testing.assert_array_equal(factored_input, input_gradient)
    assert backward_factored(weights, delta, inputs, need_input_gradient=False)[2] is None
