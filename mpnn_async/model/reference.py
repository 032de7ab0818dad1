"""The single-process reference trainer that every distributed run must match.

It keeps all layers in one process, runs micro-batches one after another and
sums their gradients, then applies the optimizer once per batch. The runtime
splits the same arithmetic across partitions; exactness tests compare the two.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from mpnn_async.model import activations, losses
from mpnn_async.model.optim import OptimizerSpec, apply_update
from mpnn_async.model.spec import NetworkSpec

__all__ = ["ReferenceTrainer", "Gradients", "Parameters"]

# [(W1, b1), ..., (WL, bL)]
Parameters = list[tuple[np.ndarray, np.ndarray]]
Gradients = list[tuple[np.ndarray, np.ndarray]]


class ReferenceTrainer:
    """A whole network in one process, trained with mini-batches and an optimizer."""

    def __init__(
        self,
        spec: NetworkSpec,
        optimizer: OptimizerSpec,
        *,
        parameters: Parameters | None = None,
    ) -> None:
        self.spec = spec
        self.optimizer = optimizer
        self.parameters: Parameters = (
            parameters if parameters is not None else spec.init_parameters()
        )
        self.optimizer_state: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = [
            ({}, {}) for _ in self.parameters
        ]
        self.steps_done = 0

    def __repr__(self) -> str:
        widths = [self.spec.input_width] + [layer.width for layer in self.spec.layers]
        return f"<ReferenceTrainer widths={widths} steps_done={self.steps_done}>"

    def forward(self, inputs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Return (pre-activations z[1..L], activations a[0..L]) for a block of inputs."""
        a = [np.asarray(inputs, dtype=self.spec.np_dtype)]
        zs: list[np.ndarray] = []
        for layer, (weights, biases) in enumerate(self.parameters, start=1):
            z = a[-1] @ weights.T + biases
            zs.append(z)
            a.append(activations.apply(self.spec.activation(layer), z))
        return zs, a

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return self.forward(inputs)[1][-1]

    def gradients(
        self, inputs: np.ndarray, targets: np.ndarray, *, batch_rows: int | None = None
    ) -> tuple[float, Gradients]:
        """Return (loss share, gradients) of these rows within a batch of `batch_rows` rows.

        Summing the results over the micro-batches of a batch gives the loss and
        gradient of the whole batch's mean.
        """
        zs, a = self.forward(inputs)
        loss, output_gradient = losses.loss_and_gradient(
            self.spec.loss, a[-1], targets, batch_rows
        )
        grads: Gradients = []
        upstream = output_gradient
        for layer in range(self.spec.depth, 0, -1):
            z = zs[layer - 1]
            delta = upstream * activations.derivative(self.spec.activation(layer), z)
            weights = self.parameters[layer - 1][0]
            grads.append((delta.T @ a[layer - 1], delta.sum(axis=0)))
            upstream = delta @ weights
        grads.reverse()
        return loss, grads

    def accumulate(
        self, inputs: np.ndarray, targets: np.ndarray, micro_batches: Iterable[slice]
    ) -> tuple[float, Gradients]:
        """Sum loss and gradients over micro-batches of one batch.

        The slices must cover the rows of `inputs` exactly once (in any order),
        so that the sum is the whole batch's mean. Raises ValueError otherwise.
        """
        rows = inputs.shape[0]
        parts = list(micro_batches)
        _check_cover(parts, rows)
        total_loss = 0.0
        total: Gradients | None = None
        for part in parts:
            loss, grads = self.gradients(inputs[part], targets[part], batch_rows=rows)
            total_loss += loss
            if total is None:
                total = [(dw.copy(), db.copy()) for dw, db in grads]
            else:
                for (acc_w, acc_b), (dw, db) in zip(total, grads):
                    acc_w += dw
                    acc_b += db
        if total is None:
            raise ValueError("a batch needs at least one micro-batch")
        return total_loss, total

    def apply(self, grads: Gradients) -> None:
        """Apply one optimizer step with the given (already averaged) gradients."""
        self.steps_done += 1
        for (weights, biases), (dw, db), (w_state, b_state) in zip(
            self.parameters, grads, self.optimizer_state
        ):
            apply_update(self.optimizer, weights, dw, w_state, self.steps_done)
            apply_update(self.optimizer, biases, db, b_state, self.steps_done)

    def train_step(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        micro_batches: Iterable[slice] | None = None,
    ) -> float:
        """Run one batch (optionally in micro-batches) and one optimizer step; return its loss."""
        parts = micro_batches if micro_batches is not None else [slice(0, inputs.shape[0])]
        loss, grads = self.accumulate(inputs, targets, parts)
        self.apply(grads)
        return loss


def _check_cover(parts: list[slice], rows: int) -> None:
    """Raise ValueError unless `parts` are step-1 slices covering rows 0..rows-1 once each."""
    if not parts:
        raise ValueError("a batch needs at least one micro-batch")
    bounds = []
    for part in parts:
        start, stop, step = part.indices(rows)
        if step != 1 or stop <= start:
            raise ValueError(
                f"micro-batch {part} must select at least one row with step 1, like slice(0, 4)"
            )
        bounds.append((start, stop))
    next_row = 0
    for start, stop in sorted(bounds):
        if start != next_row:
            raise ValueError(
                f"micro-batches {parts} do not cover rows 0..{rows - 1} exactly once "
                f"(row {min(start, next_row)} is missed or counted twice)"
            )
        next_row = stop
    if next_row != rows:
        raise ValueError(f"micro-batches {parts} end at row {next_row}, the batch has {rows} rows")
