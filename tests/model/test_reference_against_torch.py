"""The reference trainer against PyTorch autograd and torch.optim, in float64.

PyTorch is an optional test dependency: this module is skipped when it is not
installed, and nothing in mpnn_async imports it.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from mpnn_async.data.batching import split_micro_batches
from mpnn_async.model import Activation, Loss, OptimizerKind, OptimizerSpec, ReferenceTrainer
from mpnn_async.model.losses import softmax_cross_entropy
from mpnn_async.model.reference import Parameters

from .nets import copy_parameters, make_batch, make_trainer, small_spec

torch = pytest.importorskip("torch")
functional = torch.nn.functional

TOLERANCE = 1e-10
TORCH_ACTIVATIONS: dict[Activation, Callable[[Any], Any]] = {
    Activation.RELU: torch.relu,
    Activation.TANH: torch.tanh,
    Activation.SIGMOID: torch.sigmoid,
    Activation.GELU: lambda z: functional.gelu(z, approximate="tanh"),
    Activation.IDENTITY: lambda z: z,
}


def _torch_parameters(parameters: Parameters) -> list[Any]:
    tensors = []
    for weights, biases in parameters:
        tensors.append(torch.tensor(weights, dtype=torch.float64, requires_grad=True))
        tensors.append(torch.tensor(biases, dtype=torch.float64, requires_grad=True))
    return tensors


def _torch_loss(
    trainer: ReferenceTrainer, tensors: list[Any], inputs: np.ndarray, targets: np.ndarray
) -> Any:
    spec = trainer.spec
    activation = torch.tensor(inputs, dtype=torch.float64)
    for layer in range(1, spec.depth + 1):
        weights, biases = tensors[2 * layer - 2], tensors[2 * layer - 1]
        z = activation @ weights.T + biases
        activation = TORCH_ACTIVATIONS[spec.activation(layer)](z)
    if spec.loss is Loss.SOFTMAX_CROSS_ENTROPY:
        return functional.cross_entropy(activation, torch.tensor(targets, dtype=torch.int64))
    return functional.mse_loss(activation, torch.tensor(targets, dtype=torch.float64))


def _max_abs_difference(array: np.ndarray, tensor: Any) -> float:
    return float(np.abs(array - tensor.detach().numpy()).max())


@pytest.mark.parametrize("loss", list(Loss))
@pytest.mark.parametrize("activation", list(Activation))
def test_gradients_match_autograd(activation: Activation, loss: Loss) -> None:
    spec = small_spec(activation, loss, widths=(5, 7, 6, 4))
    trainer = make_trainer(spec)
    inputs, targets = make_batch(spec, 9, seed=21)
    tensors = _torch_parameters(trainer.parameters)

    loss_value, grads = trainer.gradients(inputs, targets)
    torch_loss = _torch_loss(trainer, tensors, inputs, targets)
    torch_loss.backward()

    assert abs(loss_value - torch_loss.item()) < TOLERANCE
    for layer, (dw, db) in enumerate(grads, start=1):
        weights, biases = tensors[2 * layer - 2], tensors[2 * layer - 1]
        assert _max_abs_difference(dw, weights.grad) < TOLERANCE, f"weights of layer {layer}"
        assert _max_abs_difference(db, biases.grad) < TOLERANCE, f"biases of layer {layer}"


def _torch_optimizer(spec: OptimizerSpec, tensors: list[Any]) -> Any:
    if spec.kind is OptimizerKind.ADAM:
        return torch.optim.Adam(
            tensors,
            lr=spec.learning_rate,
            betas=(spec.beta1, spec.beta2),
            eps=spec.eps,
            weight_decay=spec.weight_decay,
        )
    momentum = spec.momentum if spec.kind is OptimizerKind.MOMENTUM else 0.0
    return torch.optim.SGD(
        tensors, lr=spec.learning_rate, momentum=momentum, weight_decay=spec.weight_decay
    )


OPTIMIZERS = [
    OptimizerSpec(kind=OptimizerKind.SGD, learning_rate=0.1),
    OptimizerSpec(kind=OptimizerKind.SGD, learning_rate=0.1, weight_decay=0.05),
    OptimizerSpec(kind=OptimizerKind.MOMENTUM, learning_rate=0.1, momentum=0.9),
    OptimizerSpec(kind=OptimizerKind.MOMENTUM, learning_rate=0.1, weight_decay=0.05),
    OptimizerSpec(kind=OptimizerKind.ADAM, learning_rate=0.01),
    OptimizerSpec(kind=OptimizerKind.ADAM, learning_rate=0.01, beta1=0.8, weight_decay=0.05),
]


@pytest.mark.parametrize("loss", list(Loss))
@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: f"{o.kind}-wd{o.weight_decay}")
def test_optimizer_steps_match_torch_optim(optimizer: OptimizerSpec, loss: Loss) -> None:
    spec = small_spec(Activation.TANH, loss, widths=(5, 7, 6, 4))
    trainer = make_trainer(spec, optimizer)
    initial = copy_parameters(trainer.parameters)
    tensors = _torch_parameters(trainer.parameters)
    torch_optimizer = _torch_optimizer(optimizer, tensors)

    for step in range(6):
        inputs, targets = make_batch(spec, 8, seed=30 + step)
        trainer.train_step(inputs, targets, split_micro_batches(8, 3))
        torch_optimizer.zero_grad()
        _torch_loss(trainer, tensors, inputs, targets).backward()
        torch_optimizer.step()

    for layer, (weights, biases) in enumerate(trainer.parameters, start=1):
        torch_weights, torch_biases = tensors[2 * layer - 2], tensors[2 * layer - 1]
        assert _max_abs_difference(weights, torch_weights) < TOLERANCE, f"weights of layer {layer}"
        assert _max_abs_difference(biases, torch_biases) < TOLERANCE, f"biases of layer {layer}"
        # The steps must have moved the weights, or the comparison proves nothing.
        assert np.abs(weights - initial[layer - 1][0]).max() > 1e-3


@pytest.mark.parametrize(
    ("logits", "labels"),
    [
        ([[1000, -1000]], [1]),
        ([[1e8, 1e8]], [0]),
        ([[-431, 279, 427]], [0]),
        ([[1000, 0], [0, -1000]], [1, 0]),
    ],
)
def test_extreme_cross_entropy_matches_torch_float32(
    logits: list[list[float]], labels: list[int]
) -> None:
    logits32 = np.array(logits, dtype=np.float32)
    tensor = torch.tensor(logits32, requires_grad=True)

    loss, gradient = softmax_cross_entropy(logits32, np.array(labels))
    torch_loss = functional.cross_entropy(tensor, torch.tensor(labels))
    torch_loss.backward()

    assert loss == pytest.approx(torch_loss.item(), rel=1e-6)
    np.testing.assert_allclose(gradient, tensor.grad.numpy(), atol=1e-6)
