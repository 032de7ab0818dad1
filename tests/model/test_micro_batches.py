"""Micro-batch accumulation in the reference equals the whole batch, layer by layer."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.data.batching import split_micro_batches
from mpnn_async.model import Activation, Loss, OptimizerKind, OptimizerSpec

from .nets import copy_parameters, make_batch, make_trainer, small_spec

BATCH_ROWS = 8
SPLITS = {
    "3+3+2": split_micro_batches(BATCH_ROWS, 3),
    "5+3": split_micro_batches(BATCH_ROWS, 5),
    "1+7": [slice(0, 1), slice(1, 8)],
    "8 singles": split_micro_batches(BATCH_ROWS, 1),
    "whole": split_micro_batches(BATCH_ROWS, BATCH_ROWS),
    "out of order 4+1+3": [slice(5, 8), slice(0, 4), slice(4, 5)],
}


def _max_abs_difference(left: np.ndarray, right: np.ndarray) -> float:
    return float(np.abs(left - right).max())


@pytest.mark.parametrize("loss", list(Loss))
@pytest.mark.parametrize("split", list(SPLITS), ids=list(SPLITS))
def test_split_gradient_equals_whole(split: str, loss: Loss) -> None:
    spec = small_spec(Activation.TANH, loss, widths=(4, 6, 5, 3))
    trainer = make_trainer(spec)
    inputs, targets = make_batch(spec, BATCH_ROWS, seed=4)

    whole_loss, whole = trainer.gradients(inputs, targets)
    split_loss, accumulated = trainer.accumulate(inputs, targets, SPLITS[split])

    assert split_loss == pytest.approx(whole_loss, abs=1e-12)
    assert len(accumulated) == spec.depth
    for layer, ((dw, db), (whole_dw, whole_db)) in enumerate(zip(accumulated, whole), start=1):
        assert _max_abs_difference(dw, whole_dw) < 1e-12, f"weights of layer {layer}"
        assert _max_abs_difference(db, whole_db) < 1e-12, f"biases of layer {layer}"


@pytest.mark.parametrize("loss", list(Loss))
def test_uneven_split_differs_from_mean_of_means(loss: Loss) -> None:
    # Shows that the test above can tell a sum of batch-weighted shares from
    # the naive mean of per-micro-batch means, which is wrong for 1+7.
    spec = small_spec(Activation.TANH, loss, widths=(4, 6, 5, 3))
    trainer = make_trainer(spec)
    inputs, targets = make_batch(spec, BATCH_ROWS, seed=4)
    parts = SPLITS["1+7"]

    _, whole = trainer.gradients(inputs, targets)
    means = [trainer.gradients(inputs[part], targets[part])[1] for part in parts]

    for layer in range(spec.depth):
        mean_of_means = (means[0][layer][0] + means[1][layer][0]) / len(parts)
        assert _max_abs_difference(mean_of_means, whole[layer][0]) > 1e-4


@pytest.mark.parametrize(
    "kind", [OptimizerKind.SGD, OptimizerKind.MOMENTUM, OptimizerKind.ADAM]
)
def test_train_steps_split_equal_whole(kind: OptimizerKind) -> None:
    spec = small_spec(Activation.GELU, Loss.SOFTMAX_CROSS_ENTROPY, widths=(4, 6, 5, 3))
    optimizer = OptimizerSpec(kind=kind, learning_rate=0.05, weight_decay=0.01)
    whole = make_trainer(spec, optimizer)
    split = make_trainer(spec, optimizer)

    for step in range(4):
        inputs, targets = make_batch(spec, BATCH_ROWS, seed=10 + step)
        whole.train_step(inputs, targets)
        split.train_step(inputs, targets, split_micro_batches(BATCH_ROWS, 3))

    assert split.steps_done == 4
    for layer, ((w, b), (whole_w, whole_b)) in enumerate(
        zip(split.parameters, whole.parameters), start=1
    ):
        assert _max_abs_difference(w, whole_w) < 1e-12, f"weights of layer {layer}"
        assert _max_abs_difference(b, whole_b) < 1e-12, f"biases of layer {layer}"


def test_train_step_moves_parameters() -> None:
    spec = small_spec(Activation.GELU, Loss.SOFTMAX_CROSS_ENTROPY, widths=(4, 6, 5, 3))
    trainer = make_trainer(spec, OptimizerSpec(kind=OptimizerKind.ADAM))
    before = copy_parameters(trainer.parameters)
    inputs, targets = make_batch(spec, BATCH_ROWS, seed=10)

    trainer.train_step(inputs, targets, split_micro_batches(BATCH_ROWS, 3))

    for (w, b), (old_w, old_b) in zip(trainer.parameters, before):
        assert _max_abs_difference(w, old_w) > 1e-4
        assert _max_abs_difference(b, old_b) > 1e-4


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "at least one micro-batch"),
        ([slice(0, 4), slice(3, 8)], "row 3 is missed or counted twice"),
        ([slice(0, 3), slice(4, 8)], "row 3 is missed or counted twice"),
        ([slice(0, 5)], "end at row 5"),
        ([slice(0, 8, 2), slice(1, 8, 2)], r"slice\(0, 8, 2\) must select .* step 1"),
        ([slice(0, 8), slice(8, 8)], r"slice\(8, 8, None\) must select at least one row"),
    ],
    ids=["none", "overlap", "gap", "short", "strided", "empty"],
)
def test_accumulate_rejects_bad_cover(parts: list[slice], message: str) -> None:
    spec = small_spec(Activation.TANH, Loss.MEAN_SQUARED_ERROR)
    trainer = make_trainer(spec)
    inputs, targets = make_batch(spec, BATCH_ROWS, seed=0)

    with pytest.raises(ValueError, match=message):
        trainer.accumulate(inputs, targets, parts)
