"""Small networks, batches and finite differences shared by the model tests."""

from __future__ import annotations

import numpy as np

from mpnn_async.model import Activation, Loss, NetworkSpec, OptimizerSpec, ReferenceTrainer
from mpnn_async.model.reference import Gradients, Parameters
from mpnn_async.model.spec import LayerSpec

__all__ = [
    "central_difference_gradients",
    "copy_parameters",
    "make_batch",
    "make_trainer",
    "max_relative_error",
    "min_abs_pre_activation",
    "small_spec",
]


def small_spec(
    activation: Activation,
    loss: Loss,
    *,
    widths: tuple[int, ...] = (3, 5, 4, 3),
    dtype: str = "float64",
    seed: int = 0,
) -> NetworkSpec:
    """Build a spec whose every layer, the output included, uses `activation`."""
    layers = tuple(LayerSpec(width=width, activation=activation) for width in widths[1:])
    return NetworkSpec(input_width=widths[0], layers=layers, loss=loss, dtype=dtype, seed=seed)


def make_trainer(
    spec: NetworkSpec, optimizer: OptimizerSpec | None = None, *, bias_seed: int = 1
) -> ReferenceTrainer:
    """Build a trainer from the seeded init, with non-zero biases so that they are tested too."""
    parameters = spec.init_parameters()
    rng = np.random.default_rng(bias_seed)
    for _, biases in parameters:
        biases[:] = rng.normal(scale=0.3, size=biases.shape)
    return ReferenceTrainer(spec, optimizer or OptimizerSpec(), parameters=parameters)


def make_batch(spec: NetworkSpec, rows: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (inputs, targets): class labels for cross-entropy, real targets for MSE."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(rows, spec.input_width)).astype(spec.np_dtype)
    classes = spec.width(spec.depth)
    if spec.loss is Loss.SOFTMAX_CROSS_ENTROPY:
        targets = rng.integers(0, classes, size=rows)
    else:
        targets = rng.normal(size=(rows, classes)).astype(spec.np_dtype)
    return inputs, targets


def min_abs_pre_activation(trainer: ReferenceTrainer, inputs: np.ndarray) -> float:
    """Return the smallest |z| over every layer, to show a ReLU test is clear of the kink."""
    zs, _ = trainer.forward(inputs)
    return min(float(np.abs(z).min()) for z in zs)


def central_difference_gradients(
    trainer: ReferenceTrainer, inputs: np.ndarray, targets: np.ndarray, *, step: float = 1e-6
) -> Gradients:
    """Estimate d loss / d parameter for every weight and bias by (L(p+h) - L(p-h)) / 2h."""
    estimates: Gradients = []
    for weights, biases in trainer.parameters:
        estimates.append(
            (
                _central_difference(trainer, weights, inputs, targets, step),
                _central_difference(trainer, biases, inputs, targets, step),
            )
        )
    return estimates


def _central_difference(
    trainer: ReferenceTrainer,
    parameter: np.ndarray,
    inputs: np.ndarray,
    targets: np.ndarray,
    step: float,
) -> np.ndarray:
    estimate = np.zeros_like(parameter)
    for index in np.ndindex(parameter.shape):
        original = parameter[index]
        parameter[index] = original + step
        loss_plus, _ = trainer.gradients(inputs, targets)
        parameter[index] = original - step
        loss_minus, _ = trainer.gradients(inputs, targets)
        parameter[index] = original
        estimate[index] = (loss_plus - loss_minus) / (2 * step)
    return estimate


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Return max |actual - expected| scaled by max |expected| (at least 1e-3)."""
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-3)
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


def copy_parameters(parameters: Parameters) -> Parameters:
    """Return a deep copy of [(W, b), ...]."""
    return [(weights.copy(), biases.copy()) for weights, biases in parameters]
