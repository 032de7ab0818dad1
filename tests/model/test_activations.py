"""Activation values, derivatives against finite differences, and extreme inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpnn_async.model.activations import Activation, apply, derivative

DTYPES = [np.float32, np.float64]


def _grid(activation: Activation) -> np.ndarray:
    z = np.linspace(-6.0, 6.0, 241)
    if activation is Activation.RELU:
        # ReLU has no derivative at its kink z = 0, so the grid skips it.
        z = z[np.abs(z) > 1e-3]
    return z


@pytest.mark.parametrize("activation", list(Activation))
def test_derivative_matches_finite_differences(activation: Activation) -> None:
    z = _grid(activation)
    step = 1e-6

    numeric = (apply(activation, z + step) - apply(activation, z - step)) / (2 * step)

    np.testing.assert_allclose(derivative(activation, z), numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", list(Activation))
def test_dtype_kept_and_input_untouched(activation: Activation, dtype: type) -> None:
    z = np.array([[-2.0, -0.5, 0.25, 3.0]], dtype=dtype)
    before = z.copy()

    values = apply(activation, z)
    slopes = derivative(activation, z)

    assert values.dtype == dtype
    assert slopes.dtype == dtype
    assert values.shape == z.shape
    assert values is not z
    np.testing.assert_array_equal(z, before)


@pytest.mark.parametrize("activation", list(Activation))
def test_known_values(activation: Activation) -> None:
    z = np.array([-2.0, 0.0, 1.5])
    expected = {
        Activation.RELU: [0.0, 0.0, 1.5],
        Activation.TANH: [math.tanh(-2.0), 0.0, math.tanh(1.5)],
        Activation.SIGMOID: [1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-1.5))],
        Activation.GELU: [_tanh_gelu(-2.0), 0.0, _tanh_gelu(1.5)],
        Activation.IDENTITY: [-2.0, 0.0, 1.5],
    }[activation]

    np.testing.assert_allclose(apply(activation, z), expected, rtol=1e-15, atol=1e-300)


def _tanh_gelu(x: float) -> float:
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def test_relu_derivative_at_zero_is_zero() -> None:
    # Same choice as PyTorch, so that the autograd comparison agrees at z = 0.
    assert derivative(Activation.RELU, np.array([0.0]))[0] == 0.0


def test_gelu_close_to_erf_form() -> None:
    # The tanh approximation stays within 5e-4 of x * Phi(x) on this grid.
    # Wrong constants would not.
    z = np.linspace(-8.0, 8.0, 1601)
    exact = np.array([0.5 * x * (1 + math.erf(x / math.sqrt(2))) for x in z])

    assert np.abs(apply(Activation.GELU, z) - exact).max() < 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_saturates_without_overflow(dtype: type) -> None:
    z = np.array([-1000.0, -50.0, 50.0, 1000.0], dtype=dtype)

    with np.errstate(over="raise", invalid="raise", divide="raise"):
        values = apply(Activation.SIGMOID, z)
        slopes = derivative(Activation.SIGMOID, z)

    assert values[0] == 0.0
    assert values[-1] == 1.0
    np.testing.assert_allclose(values[1], math.exp(-50.0), rtol=1e-6)
    assert np.all(np.isfinite(slopes))
    assert slopes[0] == 0.0
    assert slopes[-1] == 0.0


def test_sigmoid_symmetric() -> None:
    z = np.linspace(-30.0, 30.0, 121)

    np.testing.assert_allclose(
        apply(Activation.SIGMOID, z) + apply(Activation.SIGMOID, -z), 1.0, rtol=1e-15
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", list(Activation))
def test_extreme_inputs_stay_finite(activation: Activation, dtype: type) -> None:
    huge = float(np.finfo(dtype).max) / 4
    z = np.array([-huge, -1e30, -1000.0, 1000.0, 1e30, huge], dtype=dtype)

    with np.errstate(over="raise", invalid="raise", divide="raise"):
        values = apply(activation, z)
        slopes = derivative(activation, z)

    assert np.all(np.isfinite(values))
    assert np.all(np.isfinite(slopes))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_saturates_to_relu(dtype: type) -> None:
    z = np.array([-1e30, -20.0, 20.0, 1e30], dtype=dtype)

    np.testing.assert_array_equal(apply(Activation.GELU, z), np.maximum(z, 0))
    np.testing.assert_array_equal(derivative(Activation.GELU, z), [0.0, 0.0, 1.0, 1.0])
