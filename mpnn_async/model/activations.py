"""Activation functions and their derivatives, evaluated on pre-activations `z`."""

from __future__ import annotations

import enum
from typing import Callable

import numpy as np

__all__ = ["Activation", "apply", "derivative"]

# sqrt(2 / pi), the constant of the tanh form of GELU.
_GELU_C = 0.7978845608028654
_GELU_K = 0.044715
# NOTE: the cubic term uses z clipped to this bound, because in float32 z**3
# overflows for |z| > 7e12 (a RuntimeWarning) and z**2 in the derivative for
# |z| > 1.8e19 (a NaN slope). The clip changes no result: once |z| > 10, tanh of
# the inner term already rounds to exactly +-1 in float32 and float64.
_GELU_CUBIC_BOUND = 1e4


class Activation(enum.StrEnum):
    """Element-wise activation of a dense layer."""

    RELU = "relu"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    # NOTE: GELU is the tanh approximation, as torch.nn.GELU(approximate="tanh"),
    # because NumPy has no vectorised erf.
    GELU = "gelu"
    IDENTITY = "identity"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Split by sign so that exp never overflows.
    out = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    exp_z = np.exp(z[~positive])
    out[~positive] = exp_z / (1.0 + exp_z)
    return out


def _gelu_inner(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the tanh argument sqrt(2/pi) * (z + k z**3) and z clipped to the cubic bound."""
    clipped = np.clip(z, -_GELU_CUBIC_BOUND, _GELU_CUBIC_BOUND)
    return _GELU_C * (clipped + _GELU_K * clipped**3), clipped


def _gelu(z: np.ndarray) -> np.ndarray:
    inner, _ = _gelu_inner(z)
    return 0.5 * z * (1.0 + np.tanh(inner))


def _gelu_derivative(z: np.ndarray) -> np.ndarray:
    inner, clipped = _gelu_inner(z)
    t = np.tanh(inner)
    d_inner = _GELU_C * (1.0 + 3.0 * _GELU_K * clipped**2)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * d_inner


def _sigmoid_derivative(z: np.ndarray) -> np.ndarray:
    s = _sigmoid(z)
    return s * (1.0 - s)


def _tanh_derivative(z: np.ndarray) -> np.ndarray:
    t = np.tanh(z)
    return 1.0 - t * t


_FORWARD: dict[Activation, Callable[[np.ndarray], np.ndarray]] = {
    Activation.RELU: lambda z: np.maximum(z, 0),
    Activation.TANH: np.tanh,
    Activation.SIGMOID: _sigmoid,
    Activation.GELU: _gelu,
    Activation.IDENTITY: lambda z: z.copy(),
}

_DERIVATIVE: dict[Activation, Callable[[np.ndarray], np.ndarray]] = {
    Activation.RELU: lambda z: (z > 0).astype(z.dtype),
    Activation.TANH: _tanh_derivative,
    Activation.SIGMOID: _sigmoid_derivative,
    Activation.GELU: _gelu_derivative,
    Activation.IDENTITY: lambda z: np.ones_like(z),
}


def apply(activation: Activation, z: np.ndarray) -> np.ndarray:
    """Return f(z) as a new array of z's dtype."""
    return _FORWARD[activation](z).astype(z.dtype, copy=False)


def derivative(activation: Activation, z: np.ndarray) -> np.ndarray:
    """Return f'(z) as a new array of z's dtype."""
    return _DERIVATIVE[activation](z).astype(z.dtype, copy=False)
