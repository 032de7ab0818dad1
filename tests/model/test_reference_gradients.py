"""ReferenceTrainer.gradients against central finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.model import Activation, Loss

from .nets import (
    central_difference_gradients,
    make_batch,
    make_trainer,
    max_relative_error,
    min_abs_pre_activation,
    small_spec,
)

# Central differences with h = 1e-6 in float64 have a truncation error of
# about h**2 and a rounding error of about 1e-16 / h, so 1e-6 relative leaves
# a wide margin while still catching any wrong term of the chain rule.
STEP = 1e-6
TOLERANCE = 1e-6
# Every ReLU input z must be at least this far from the kink at 0. Perturbing
# one parameter by STEP moves z by far less, so no difference quotient spans it.
RELU_MARGIN = 1e-4


@pytest.mark.parametrize("loss", list(Loss))
@pytest.mark.parametrize("activation", list(Activation))
def test_gradients_match_finite_differences(activation: Activation, loss: Loss) -> None:
    spec = small_spec(activation, loss)
    trainer = make_trainer(spec)
    inputs, targets = make_batch(spec, 6, seed=1)
    if activation is Activation.RELU:
        assert min_abs_pre_activation(trainer, inputs) > RELU_MARGIN

    _, analytic = trainer.gradients(inputs, targets)
    numeric = central_difference_gradients(trainer, inputs, targets, step=STEP)

    assert len(analytic) == spec.depth
    for layer, ((dw, db), (num_dw, num_db)) in enumerate(zip(analytic, numeric), start=1):
        assert dw.shape == spec.weight_shape(layer)
        assert db.shape == (spec.width(layer),)
        assert max_relative_error(dw, num_dw) < TOLERANCE, f"weights of layer {layer}"
        assert max_relative_error(db, num_db) < TOLERANCE, f"biases of layer {layer}"


@pytest.mark.parametrize("loss", list(Loss))
def test_gradients_not_all_zero(loss: Loss) -> None:
    # Guards the finite-difference test above against a degenerate net whose
    # gradients vanish, where any implementation would pass.
    spec = small_spec(Activation.RELU, loss)
    trainer = make_trainer(spec)
    inputs, targets = make_batch(spec, 6, seed=1)

    _, grads = trainer.gradients(inputs, targets)

    for layer, (dw, db) in enumerate(grads, start=1):
        assert np.abs(dw).max() > 1e-3, f"weights of layer {layer}"
        assert np.abs(db).max() > 1e-3, f"biases of layer {layer}"


def test_cross_entropy_loss_matches_direct_formula() -> None:
    spec = small_spec(Activation.TANH, Loss.SOFTMAX_CROSS_ENTROPY)
    trainer = make_trainer(spec)
    inputs, labels = make_batch(spec, 6, seed=2)

    loss, _ = trainer.gradients(inputs, labels)

    logits = trainer.predict(inputs)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(probabilities[np.arange(6), labels]))
    assert loss == pytest.approx(expected, rel=1e-13)


def test_squared_error_loss_matches_direct_formula() -> None:
    spec = small_spec(Activation.SIGMOID, Loss.MEAN_SQUARED_ERROR)
    trainer = make_trainer(spec)
    inputs, targets = make_batch(spec, 6, seed=2)

    loss, _ = trainer.gradients(inputs, targets)

    expected = np.mean((trainer.predict(inputs) - targets) ** 2)
    assert loss == pytest.approx(expected, rel=1e-13)


def test_forward_shapes_and_repr() -> None:
    spec = small_spec(Activation.GELU, Loss.SOFTMAX_CROSS_ENTROPY, widths=(3, 5, 4, 2))
    trainer = make_trainer(spec)
    inputs, labels = make_batch(spec, 7, seed=3)

    zs, activations = trainer.forward(inputs)
    trainer.train_step(inputs, labels)

    assert [z.shape for z in zs] == [(7, 5), (7, 4), (7, 2)]
    assert [a.shape for a in activations] == [(7, 3), (7, 5), (7, 4), (7, 2)]
    assert repr(trainer) == "<ReferenceTrainer widths=[3, 5, 4, 2] steps_done=1>"
