"""Loss values, gradients, extreme logits and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpnn_async.errors import InvalidInputError
from mpnn_async.model.losses import (
    Loss,
    loss_and_gradient,
    mean_squared_error,
    softmax_cross_entropy,
)


def _logits(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def _targets(loss: Loss, rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    if loss is Loss.SOFTMAX_CROSS_ENTROPY:
        return rng.integers(0, width, size=rows)
    return rng.normal(size=(rows, width))


def test_cross_entropy_far_wrong_label() -> None:
    loss, gradient = softmax_cross_entropy(_logits([[1000, -1000]]), np.array([1]))

    assert loss == 2000.0
    assert gradient.dtype == np.float32
    np.testing.assert_array_equal(gradient, [[1.0, -1.0]])


@pytest.mark.parametrize("label", [0, 1])
def test_cross_entropy_equal_huge_logits(label: int) -> None:
    loss, gradient = softmax_cross_entropy(_logits([[1e8, 1e8]]), np.array([label]))

    assert loss == pytest.approx(math.log(2), rel=1e-6)
    assert np.all(np.isfinite(gradient))
    np.testing.assert_allclose(gradient.sum(), 0.0, atol=1e-7)


def test_cross_entropy_three_classes_large_gap() -> None:
    loss, gradient = softmax_cross_entropy(_logits([[-431, 279, 427]]), np.array([0]))

    assert loss == 858.0
    assert np.all(np.isfinite(gradient))
    np.testing.assert_allclose(gradient, [[-1.0, 0.0, 1.0]], atol=1e-7)


def test_cross_entropy_batch_mean_of_extremes() -> None:
    logits = _logits([[1000, 0], [0, -1000]])

    loss, gradient = softmax_cross_entropy(logits, np.array([1, 0]))

    assert loss == 500.0
    assert np.all(np.isfinite(gradient))
    np.testing.assert_array_equal(gradient, [[0.5, -0.5], [0.0, 0.0]])


def test_cross_entropy_matches_log_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(5, 4))
    labels = np.array([0, 3, 1, 1, 2])

    loss, gradient = softmax_cross_entropy(logits, labels)

    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(probabilities[np.arange(5), labels])), rel=1e-14)
    one_hot = np.eye(4)[labels]
    np.testing.assert_allclose(gradient, (probabilities - one_hot) / 5, rtol=1e-12, atol=1e-16)


def test_squared_error_is_mean_over_elements() -> None:
    outputs = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    targets = np.array([[1.5, 2.0, 1.0], [0.0, 1.0, 4.0]])

    loss, gradient = mean_squared_error(outputs, targets)

    # Squared errors 0.25 + 0 + 4 + 0 + 4 + 0 over 6 elements.
    assert loss == pytest.approx(8.25 / 6, rel=1e-15)
    np.testing.assert_allclose(gradient, 2 * (outputs - targets) / 6, rtol=1e-15)


@pytest.mark.parametrize("loss", list(Loss))
def test_loss_gradient_matches_finite_differences(loss: Loss) -> None:
    rng = np.random.default_rng(1)
    outputs = rng.normal(size=(4, 3))
    targets = _targets(loss, rng, 4, 3)
    step = 1e-6

    _, gradient = loss_and_gradient(loss, outputs, targets, batch_rows=10)

    numeric = np.zeros_like(outputs)
    for index in np.ndindex(outputs.shape):
        plus = outputs.copy()
        plus[index] += step
        minus = outputs.copy()
        minus[index] -= step
        loss_plus, _ = loss_and_gradient(loss, plus, targets, batch_rows=10)
        loss_minus, _ = loss_and_gradient(loss, minus, targets, batch_rows=10)
        numeric[index] = (loss_plus - loss_minus) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss", list(Loss))
def test_batch_rows_splits_mean_exactly(loss: Loss) -> None:
    rng = np.random.default_rng(2)
    outputs = rng.normal(size=(8, 3))
    targets = _targets(loss, rng, 8, 3)

    whole_loss, whole_gradient = loss_and_gradient(loss, outputs, targets)
    head_loss, head_gradient = loss_and_gradient(loss, outputs[:3], targets[:3], batch_rows=8)
    tail_loss, tail_gradient = loss_and_gradient(loss, outputs[3:], targets[3:], batch_rows=8)

    assert head_loss + tail_loss == pytest.approx(whole_loss, rel=1e-14)
    np.testing.assert_allclose(head_gradient, whole_gradient[:3], rtol=1e-14)
    np.testing.assert_allclose(tail_gradient, whole_gradient[3:], rtol=1e-14)


def test_loss_and_gradient_accepts_string_names() -> None:
    outputs = np.array([[0.5, -0.5]])

    cross_entropy, _ = loss_and_gradient("softmax_cross_entropy", outputs, np.array([0]))
    squared_error, _ = loss_and_gradient("mean_squared_error", outputs, np.array([[0.0, 0.0]]))

    assert cross_entropy == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-14)
    assert squared_error == pytest.approx(0.25, rel=1e-14)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, -1]), r"\[0, 3\)"),
        (np.array([0, 3]), r"\[0, 3\)"),
        (np.array([[0], [1]]), r"shape \(2, 1\)"),
        (np.array([0, 1, 2]), r"shape \(3,\)"),
        (np.array([0.0, 1.5]), "integer class indices"),
        (np.array([0.0, np.nan]), "integer class indices"),
        (np.array(["a", "b"]), "integer class indices"),
    ],
    ids=["negative", "too-large", "column", "too-many", "fractional", "nan", "strings"],
)
def test_cross_entropy_rejects_bad_labels(labels: np.ndarray, message: str) -> None:
    logits = np.zeros((2, 3))

    with pytest.raises(InvalidInputError, match=message):
        softmax_cross_entropy(logits, labels)


def test_cross_entropy_accepts_integral_float_labels() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])

    from_floats, _ = softmax_cross_entropy(logits, np.array([1.0, 0.0]))
    from_ints, _ = softmax_cross_entropy(logits, np.array([1, 0]))

    assert from_floats == from_ints


@pytest.mark.parametrize("loss", list(Loss))
def test_batch_rows_below_rows_rejected(loss: Loss) -> None:
    outputs = np.zeros((4, 2))
    targets = _targets(loss, np.random.default_rng(0), 4, 2)

    with pytest.raises(InvalidInputError, match="batch_rows=3"):
        loss_and_gradient(loss, outputs, targets, batch_rows=3)


def test_squared_error_rejects_target_size_mismatch() -> None:
    with pytest.raises(InvalidInputError, match=r"5 values for outputs of shape \(2, 2\)"):
        mean_squared_error(np.zeros((2, 2)), np.zeros(5))
