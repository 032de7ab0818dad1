"""Forward and backward of any subset S of one dense layer's neurons.

These are the only numeric kernels the runtime uses: a partition that owns
rows S of layer l holds W[S] (shape |S| x width[l-1]) and b[S], and is given
the full input block a[l-1] (micro-batch rows x width[l-1]).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mpnn_async.model.activations import Activation, apply, derivative

__all__ = ["WeightGradient", "backward", "backward_factored", "delta_from_output_gradient", "forward"]

# Bytes of weight-gradient rows computed by one matrix product in WeightGradient.
# At least _MIN_CHUNK_ROWS rows are taken: with OpenBLAS 0.3.31, products of one
# row differed from the whole product in the last bits, while chunks of 16 rows
# or more matched it bit for bit.
GRADIENT_CHUNK_BYTES = 1 << 20
_MIN_CHUNK_ROWS = 64


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


@dataclasses.dataclass(frozen=True, slots=True)
class WeightGradient:
    """One micro-batch's weight gradient `delta.T @ inputs`, kept as its two factors.

    The factors take rows x (|S| + inputs) elements and the product |S| x inputs,
    so a micro-batch of 128 rows through a 4096 x 4096 slice keeps 1/16 of the
    product's memory. `to_array` and `add_to` compute the product in row chunks
    straight into their output, so no product-sized temporary is allocated.
    """

    delta: np.ndarray
    inputs: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (self.delta.shape[1], self.inputs.shape[1])

    def to_array(self) -> np.ndarray:
        """Return the product as a new array."""
        result = np.empty(self.shape, dtype=np.result_type(self.delta, self.inputs))
        for rows in self._row_chunks(result):
            np.matmul(self.delta[:, rows].T, self.inputs, out=result[rows])
        return result

    def add_to(self, total: np.ndarray) -> None:
        """Add the product to `total` in place, one chunk of rows at a time."""
        if total.shape != self.shape:
            raise ValueError(f"gradient of shape {self.shape} cannot be added to {total.shape}")
        chunk: np.ndarray | None = None
        for rows in self._row_chunks(total):
            count = rows.stop - rows.start
            if chunk is None:
                chunk = np.empty((min(count, total.shape[0]), total.shape[1]), dtype=total.dtype)
            np.matmul(self.delta[:, rows].T, self.inputs, out=chunk[:count])
            total[rows] += chunk[:count]

    @staticmethod
    def _row_chunks(output: np.ndarray) -> list[slice]:
        row_bytes = max(1, output.shape[1] * output.itemsize)
        step = max(_MIN_CHUNK_ROWS, GRADIENT_CHUNK_BYTES // row_bytes)
        return [slice(start, min(start + step, output.shape[0])) for start in range(0, output.shape[0], step)]


def backward_factored(
    weights: np.ndarray, delta: np.ndarray, inputs: np.ndarray, *, need_input_gradient: bool = True
) -> tuple[WeightGradient, np.ndarray, np.ndarray | None]:
    """Return what `backward` returns, with the weight gradient as a WeightGradient."""
    bias_gradient = delta.sum(axis=0)
    input_gradient = delta @ weights if need_input_gradient else None
    return WeightGradient(delta, inputs), bias_gradient, input_gradient
