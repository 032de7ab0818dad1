"""Checks that every loader applies to the feature matrix and labels it returns."""

from __future__ import annotations

import dataclasses

import numpy as np

from mpnn_async.errors import InvalidInputError

__all__ = ["RawSamples", "as_feature_matrix", "as_labels", "check_samples"]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class RawSamples:
    """Validated, unscaled samples of one source, before the train/test split."""

    x: np.ndarray  # (samples, features) in the source's dtype
    y: np.ndarray  # int64 labels, each below `classes`
    classes: int
    # The largest value a feature can take when the source defines one (16 for
    # digits, 255 for MNIST); None lets unit scaling use the training maximum.
    max_value: float | None


def as_feature_matrix(values: np.ndarray, *, source: str) -> np.ndarray:
    """Return `values` as a 2-D (samples, features) array, flattening trailing dimensions.

    The dtype is kept (uint8 pixels stay uint8). Raise InvalidInputError, naming
    `source`, for a non-numeric array, fewer than 2 dimensions or a non-finite value.
    """
    if values.dtype.kind not in "uif":
        raise InvalidInputError(
            f"{source}: features must be integers or floats, got dtype {values.dtype}"
        )
    if values.ndim < 2:
        raise InvalidInputError(
            f"{source}: features must have a sample dimension and at least one feature "
            f"dimension, got shape {values.shape}"
        )
    matrix = values.reshape(values.shape[0], int(np.prod(values.shape[1:])))
    if matrix.shape[1] == 0:
        raise InvalidInputError(f"{source}: samples have no features, shape {values.shape}")
    if matrix.dtype.kind == "f" and not np.isfinite(matrix).all():
        row = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise InvalidInputError(
            f"{source}: features contain NaN or infinity, first in sample {row}"
        )
    return matrix


def as_labels(values: np.ndarray, *, source: str) -> np.ndarray:
    """Return `values` as int64 class labels, accepting floats only when they are whole.

    Raise InvalidInputError, naming `source`, unless the array is 1-D with
    non-negative whole numbers.
    """
    if values.ndim != 1:
        raise InvalidInputError(
            f"{source}: labels must be one-dimensional, got shape {values.shape}"
        )
    if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
        raise InvalidInputError(f"{source}: labels exceed the int64 range, max {values.max()}")
    if values.dtype.kind in "iu":
        labels = values.astype(np.int64)
    elif values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**62)
        if not whole.all():
            index = int(np.flatnonzero(~whole)[0])
            raise InvalidInputError(
                f"{source}: labels must be whole numbers, "
                f"got {float(values[index])} in sample {index}"
            )
        labels = values.astype(np.int64)
    else:
        raise InvalidInputError(f"{source}: labels must be integers, got dtype {values.dtype}")
    if labels.size and labels.min() < 0:
        index = int(np.argmin(labels))
        raise InvalidInputError(
            f"{source}: labels must be non-negative class indices, got {labels[index]} "
            f"in sample {index}"
        )
    return labels


def check_samples(x: np.ndarray, y: np.ndarray, *, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate features and labels together and return them as (matrix, int64 labels)."""
    matrix = as_feature_matrix(x, source=source)
    labels = as_labels(y, source=source)
    if matrix.shape[0] != labels.shape[0]:
        raise InvalidInputError(
            f"{source}: {matrix.shape[0]} samples of features but {labels.shape[0]} labels"
        )
    if matrix.shape[0] == 0:
        raise InvalidInputError(f"{source}: contains no samples")
    return matrix, labels
