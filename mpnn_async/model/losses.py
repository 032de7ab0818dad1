"""Losses on the last layer's output, with the gradient for micro-batch accumulation.

Both losses are means over a whole batch of `batch_rows` samples. A micro-batch
passes the rows it holds together with the row count of the whole batch, so the
sum of micro-batch losses and gradients equals the whole-batch mean, not a mean
of per-micro-batch means.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Loss", "loss_and_gradient", "softmax_cross_entropy", "mean_squared_error"]


class Loss(enum.StrEnum):
    """Training loss."""

    SOFTMAX_CROSS_ENTROPY = "softmax_cross_entropy"
    # Mean over every element, as torch.nn.MSELoss(reduction="mean").
    MEAN_SQUARED_ERROR = "mean_squared_error"


def softmax_cross_entropy(
    logits: np.ndarray, labels: np.ndarray, batch_rows: int | None = None
) -> tuple[float, np.ndarray]:
    """Compute the summed loss of these rows divided by `batch_rows`, and its gradient.

    Stable for any finite logits: each row is shifted by its max, and the loss
    is computed as `(max - logit[label]) + log(sum(exp(logits - max)))` so that
    a large max does not swallow the log-sum-exp term in float32.
    """
    rows = logits.shape[0]
    batch_rows = rows if batch_rows is None else batch_rows
    labels = np.asarray(labels, dtype=np.int64)
    row_max = logits.max(axis=1, keepdims=True)
    shifted = logits - row_max
    exp_shifted = np.exp(shifted)
    sum_exp = exp_shifted.sum(axis=1, keepdims=True)
    picked = shifted[np.arange(rows), labels]
    per_row = np.log(sum_exp[:, 0]) - picked
    loss = float(per_row.sum(dtype=np.float64) / batch_rows)

    gradient = exp_shifted / sum_exp
    gradient[np.arange(rows), labels] -= 1
    gradient /= batch_rows
    return loss, gradient.astype(logits.dtype, copy=False)


def mean_squared_error(
    outputs: np.ndarray, targets: np.ndarray, batch_rows: int | None = None
) -> tuple[float, np.ndarray]:
    """Compute the squared error of these rows over `batch_rows * width`, and its gradient."""
    rows = outputs.shape[0]
    batch_rows = rows if batch_rows is None else batch_rows
    count = batch_rows * outputs.shape[1]
    diff = outputs - np.asarray(targets, dtype=outputs.dtype).reshape(outputs.shape)
    loss = float(np.sum(diff * diff, dtype=np.float64) / count)
    gradient = (2.0 / count) * diff
    return loss, gradient.astype(outputs.dtype, copy=False)


def loss_and_gradient(
    loss: Loss, outputs: np.ndarray, targets: np.ndarray, batch_rows: int | None = None
) -> tuple[float, np.ndarray]:
    """Dispatch to the loss function named by `loss`."""
    if loss is Loss.SOFTMAX_CROSS_ENTROPY:
        return softmax_cross_entropy(outputs, targets, batch_rows)
    return mean_squared_error(outputs, targets, batch_rows)
