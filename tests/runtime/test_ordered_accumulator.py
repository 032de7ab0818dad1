"""OrderedAccumulator: sums in micro-batch order, with weight gradients given as arrays or factors."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.model.kernels import WeightGradient
from mpnn_async.runtime.gather import OrderedAccumulator


def _parts(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    delta = rng.normal(size=(4, 70))
    return delta, rng.normal(size=(4, 30)), delta.sum(axis=0)


def test_factors_out_of_order_equal_arrays_in_order() -> None:
    parts = [_parts(seed) for seed in range(4)]
    in_order = OrderedAccumulator()
    factored = OrderedAccumulator()

    for index, (delta, inputs, bias) in enumerate(parts):
        in_order.add(index, [WeightGradient(delta, inputs).to_array(), bias])
    for index in (2, 0, 3, 1):
        delta, inputs, bias = parts[index]
        factored.add(index, [WeightGradient(delta, inputs), bias])

    expected_weights, expected_bias = in_order.take(4)
    weights, bias = factored.take(4)
    np.testing.assert_array_equal(weights, expected_weights)
    np.testing.assert_array_equal(bias, expected_bias)


def test_first_part_is_copied_not_kept() -> None:
    accumulator = OrderedAccumulator()
    first = np.ones(3)

    accumulator.add(0, [first])
    accumulator.add(1, [np.ones(3)])

    assert first.tolist() == [1.0, 1.0, 1.0]
    assert accumulator.take(2)[0].tolist() == [2.0, 2.0, 2.0]


def test_take_before_all_micro_batches_fails() -> None:
    accumulator = OrderedAccumulator()
    accumulator.add(1, [np.ones(2)])

    with pytest.raises(ValueError, match=r"have 0 in order and \[1\] pending"):
        accumulator.take(2)
