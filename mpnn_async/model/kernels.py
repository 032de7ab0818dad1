"""Forward and backward of any subset S of one dense layer's neurons.

These are the only numeric kernels the runtime uses: a partition that owns
rows S of layer l holds W[S] (shape |S| x width[l-1]) and b[S], and is given
the full input block a[l-1] (micro-batch rows x width[l-1]).
"""

from __future__ import annotations

import numpy as np

from mpnn_async.model.activations import Activation, apply, derivative

__all__ = ["forward", "delta_from_output_gradient", "backward"]


def forward(
    weights: np.ndarray, biases: np.ndarray, inputs: np.ndarray, activation: Activation
) -> tuple[np.ndarray, np.ndarray]:
    """Return (z, a) for the neurons whose rows are `weights`: z = inputs @ W.T + b, a = f(z)."""
    z = inputs @ weights.T
    z += biases
    return z, apply(activation, z)


def delta_from_output_gradient(
    output_gradient: np.ndarray, z: np.ndarray, activation: Activation
) -> np.ndarray:
    """Turn dLoss/da[:, S] into delta = dLoss/dz[:, S] by the chain rule."""
    if activation is Activation.IDENTITY:
        return output_gradient
    return output_gradient * derivative(activation, z)


def backward(
    weights: np.ndarray, delta: np.ndarray, inputs: np.ndarray, *, need_input_gradient: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Return (dW[S], db[S], partial dLoss/d inputs) for one micro-batch.

    The partial input gradient `delta @ W[S]` covers every column of the input;
    the full gradient of a[l-1] is the sum of these partials over all owners of
    layer l. Layer 1 skips it (`need_input_gradient=False`), since nothing
    consumes the gradient of the data.
    """
    weight_gradient = delta.T @ inputs
    bias_gradient = delta.sum(axis=0)
    input_gradient = delta @ weights if need_input_gradient else None
    return weight_gradient, bias_gradient, input_gradient
