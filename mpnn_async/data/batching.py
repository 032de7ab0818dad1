"""The data order every trainer follows, so distributed runs match the reference."""

from __future__ import annotations

import numpy as np

__all__ = ["epoch_batches", "split_micro_batches"]


def epoch_batches(sample_count: int, batch_rows: int, *, seed: int, epoch: int) -> list[np.ndarray]:
    """Return the sample indices of each batch of one epoch, shuffled by (seed, epoch).

    The last batch is smaller when `batch_rows` does not divide `sample_count`.
    """
    if batch_rows <= 0:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    order = np.random.default_rng([seed, epoch]).permutation(sample_count)
    return [order[start : start + batch_rows] for start in range(0, sample_count, batch_rows)]


def split_micro_batches(batch_rows: int, micro_batch_rows: int) -> list[slice]:
    """Split `batch_rows` rows into consecutive slices of `micro_batch_rows` (last one shorter).

    For example 8 rows in micro-batches of 3 give slices of 3, 3 and 2 rows.
    """
    if micro_batch_rows <= 0:
        raise ValueError(f"micro_batch_rows must be positive, got {micro_batch_rows}")
    return [
        slice(start, min(start + micro_batch_rows, batch_rows))
        for start in range(0, batch_rows, micro_batch_rows)
    ]
