"""Losses on the last layer's output, with the gradient for micro-batch accumulation.

Both losses are means over a whole batch of `batch_rows` samples. A micro-batch
passes the rows it holds together with the row count of the whole batch, so the
sum of micro-batch losses and gradients equals the whole-batch mean, not a mean
of per-micro-batch means.
"""

from __future__ import annotations

import enum

import numpy as np

from mpnn_async.errors import InvalidInputError

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
    batch_rows = _check_batch_rows(rows, batch_rows)
    labels = _class_indices(labels, rows=rows, classes=logits.shape[1])
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
    batch_rows = _check_batch_rows(rows, batch_rows)
    count = batch_rows * outputs.shape[1]
    targets = np.asarray(targets, dtype=outputs.dtype)
    if targets.size != outputs.size:
        raise InvalidInputError(
            f"targets have {targets.size} values for outputs of shape {outputs.shape}, "
            "expected one target per output value"
        )
    diff = outputs - targets.reshape(outputs.shape)
    loss = float(np.sum(diff * diff, dtype=np.float64) / count)
    gradient = (2.0 / count) * diff
    return loss, gradient.astype(outputs.dtype, copy=False)


def loss_and_gradient(
    loss: Loss | str, outputs: np.ndarray, targets: np.ndarray, batch_rows: int | None = None
) -> tuple[float, np.ndarray]:
    """Dispatch to the loss function named by `loss` (a `Loss` or its string value)."""
    kind = Loss(loss)
    if kind is Loss.SOFTMAX_CROSS_ENTROPY:
        return softmax_cross_entropy(outputs, targets, batch_rows)
    if kind is Loss.MEAN_SQUARED_ERROR:
        return mean_squared_error(outputs, targets, batch_rows)
    raise AssertionError(f"no loss function for {kind!r}")


def _check_batch_rows(rows: int, batch_rows: int | None) -> int:
    if batch_rows is None:
        return rows
    if batch_rows < rows or batch_rows <= 0:
        raise InvalidInputError(
            f"batch_rows={batch_rows} must be positive and at least the {rows} rows given. "
            "Pass the row count of the whole batch"
        )
    return batch_rows


def _class_indices(labels: np.ndarray, *, rows: int, classes: int) -> np.ndarray:
    """Return `labels` as int64 class indices, or raise if any is not one of the classes.

    Unchecked, a negative label would index from the end, and a (rows, 1) column
    would broadcast into a (rows, rows) selection. Both give a wrong loss silently.
    """
    labels = np.asarray(labels)
    if labels.shape != (rows,):
        raise InvalidInputError(
            f"labels have shape {labels.shape}, expected ({rows},) with one class index per row"
        )
    if labels.dtype.kind not in "iuf":
        raise InvalidInputError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
        raise InvalidInputError("labels must be integer class indices, got non-integer floats")
    if rows and (labels.min() < 0 or labels.max() >= classes):
        raise InvalidInputError(
            f"labels must lie in [0, {classes}), got values from {labels.min()} to {labels.max()}"
        )
    return labels.astype(np.int64)
