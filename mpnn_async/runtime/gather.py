"""Gathering the blocks a computation needs, and summing gradients in a fixed order."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np

from mpnn_async.model.kernels import WeightGradient

__all__ = ["Gather", "OrderedAccumulator"]

# One gradient part: an array, or a weight gradient kept as its factors.
GradientPart = np.ndarray | WeightGradient


@dataclasses.dataclass(slots=True)
class Gather:
    """The blocks one computation waits for: one per expected source.

    `deliveries` are the transport deliveries whose content went into this
    gather; they are acknowledged only after the computation's results are
    published, so a crash before that leaves them on the broker.
    """

    expected: tuple[str, ...]
    blocks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    deliveries: list[Any] = dataclasses.field(default_factory=list)
    rows: int | None = None

    @property
    def is_complete(self) -> bool:
        return len(self.blocks) == len(self.expected)

    def missing(self) -> tuple[str, ...]:
        return tuple(source for source in self.expected if source not in self.blocks)

    def add(self, source: str, block: np.ndarray, delivery: Any | None = None) -> None:
        self.blocks[source] = block
        if self.rows is None:
            self.rows = block.shape[0]
        if delivery is not None:
            self.deliveries.append(delivery)

    def ordered(self) -> list[np.ndarray]:
        """Return the blocks in the order of `expected` (the plan's partition order)."""
        return [self.blocks[source] for source in self.expected]


class OrderedAccumulator:
    """Sums per-micro-batch gradients in micro-batch order, whatever order they arrive in.

    Floating-point addition is not associative, so summing in arrival order
    would make the weights depend on message timing. Out-of-order results wait
    in `pending` until every earlier micro-batch has been added.

    A part may be a WeightGradient: it waits in `pending` as its factors and
    is multiplied out into the total in row chunks, so the accumulator holds
    one gradient-sized array per part, not two.

    With `fold=False` every micro-batch's gradients stay separate until `take`:
    a replicated partition sends some of them to its other replicas, and each
    replica then sums the same arrays in the same order.
    """

    def __init__(self, *, fold: bool = True) -> None:
        self.fold = fold
        self.total: list[np.ndarray] | None = None
        self.next_micro_batch = 0
        self.pending: dict[int, list[GradientPart]] = {}

    def __repr__(self) -> str:
        return f"<OrderedAccumulator next={self.next_micro_batch} pending={sorted(self.pending)}>"

    def has(self, micro_batch: int) -> bool:
        return micro_batch < self.next_micro_batch or micro_batch in self.pending

    def add(self, micro_batch: int, gradients: Iterable[GradientPart]) -> None:
        if self.has(micro_batch):
            raise ValueError(f"micro-batch {micro_batch} was already accumulated")
        parts = list(gradients)
        if not self.fold:
            # Kept as arrays: the same bits are sent to the other replicas and summed here.
            parts = [part.to_array() if isinstance(part, WeightGradient) else part for part in parts]
        self.pending[micro_batch] = parts
        while self.fold and self.next_micro_batch in self.pending:
            self._add_to_total(self.pending.pop(self.next_micro_batch))
            self.next_micro_batch += 1

    def gradients_of(self, micro_batch: int) -> list[np.ndarray]:
        """Return the separate gradients of one micro-batch (only without folding, so they are arrays)."""
        return [part for part in self.pending[micro_batch] if isinstance(part, np.ndarray)]

    def take(self, micro_batches: int) -> list[np.ndarray]:
        """Return the sum over micro-batches 0..micro_batches-1 and reset."""
        if not self.fold:
            self._fold_all(micro_batches)
        if self.next_micro_batch != micro_batches or self.pending or self.total is None:
            raise ValueError(
                f"expected gradients of {micro_batches} micro-batches, have "
                f"{self.next_micro_batch} in order and {sorted(self.pending)} pending"
            )
        total = self.total
        self.total = None
        self.next_micro_batch = 0
        return total

    def _fold_all(self, micro_batches: int) -> None:
        missing = [index for index in range(micro_batches) if index not in self.pending]
        if missing:
            raise ValueError(f"expected gradients of {micro_batches} micro-batches, missing {missing}")
        for index in range(micro_batches):
            self._add_to_total(self.pending.pop(index))
        self.next_micro_batch = micro_batches

    def _add_to_total(self, parts: list[GradientPart]) -> None:
        if self.total is None:
            self.total = [_to_new_array(part) for part in parts]
        else:
            for total, part in zip(self.total, parts, strict=True):
                _add_part(total, part)


def _to_new_array(part: GradientPart) -> np.ndarray:
    return part.to_array() if isinstance(part, WeightGradient) else part.copy()


def _add_part(total: np.ndarray, part: GradientPart) -> None:
    if isinstance(part, WeightGradient):
        part.add_to(total)
    else:
        total += part
