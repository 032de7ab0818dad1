"""The deterministic stratified train/test split."""

from __future__ import annotations

import math

import numpy as np

from mpnn_async.errors import ConfigError

__all__ = ["stratified_split"]


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (train, test), keeping each class's share in both.

    The test split takes round(test_fraction * samples) samples (halves round
    up). They are shared among classes in proportion to each class's count,
    rounded down, and the samples left over go to the classes with the largest
    remainders, the smaller label first on a tie. Within a class the test
    samples are drawn at random from `numpy.random.default_rng(seed)`, class by
    class in ascending label order. Both index arrays are sorted, so samples
    keep their original order. The same labels and seed always give the same split.
    """
    sample_count = labels.shape[0]
    test_count = math.floor(test_fraction * sample_count + 0.5)
    if test_fraction > 0 and test_count == 0:
        raise ConfigError(
            "dataset.test_fraction",
            f"{test_fraction} of {sample_count} samples selects no test sample",
            fix="raise test_fraction or limit, or set test_fraction = 0 for no test split",
        )
    if test_count >= sample_count:
        raise ConfigError(
            "dataset.test_fraction",
            f"{test_fraction} of {sample_count} samples leaves no training sample",
            fix="lower test_fraction or raise limit",
        )

    class_labels, class_counts = np.unique(labels, return_counts=True)
    # Integer arithmetic, so the shares do not depend on float rounding.
    shares = test_count * class_counts
    per_class = shares // sample_count
    leftover = test_count - int(per_class.sum())
    by_remainder = np.argsort(-(shares % sample_count), kind="stable")
    per_class[by_remainder[:leftover]] += 1

    rng = np.random.default_rng(seed)
    is_test = np.zeros(sample_count, dtype=bool)
    for label, take in zip(class_labels, per_class, strict=True):
        members = np.flatnonzero(labels == label)
        is_test[rng.permutation(members)[:take]] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
