"""Train a job with the single-process reference, in the same data order as the scheduler."""

from __future__ import annotations

from mpnn_async.data import Dataset
from mpnn_async.data.batching import epoch_batches, split_micro_batches
from mpnn_async.model.losses import Loss
from mpnn_async.model.reference import Parameters, ReferenceTrainer
from mpnn_async.runtime.job import JobSpec

import numpy as np

__all__ = ["train_reference"]


def train_reference(
    job: JobSpec,
    dataset: Dataset,
    *,
    initial: Parameters | None = None,
    trainer: ReferenceTrainer | None = None,
) -> ReferenceTrainer:
    """Return a reference trainer after running `job` on `dataset` step for step.

    The batches, micro-batch split and step count follow `JobRunner` exactly,
    so its weights must equal the distributed run's (float64 within 1e-10).
    Pass `trainer` to continue one (weights, optimizer state and step count),
    as a second job on the same stored model does.
    """
    training = job.training
    if trainer is None:
        trainer = ReferenceTrainer(job.model, job.optimizer, parameters=initial)
    steps = 0
    outputs = job.model.width(job.model.depth)
    for epoch in range(training.epochs):
        batches = epoch_batches(
            dataset.x_train.shape[0], training.batch_rows, seed=training.seed, epoch=epoch
        )
        for indices in batches:
            labels = dataset.y_train[indices]
            if job.model.loss is Loss.SOFTMAX_CROSS_ENTROPY:
                targets = labels
            else:
                targets = np.eye(outputs, dtype=job.model.np_dtype)[labels]
            parts = split_micro_batches(len(indices), training.micro_batch_rows)
            trainer.train_step(dataset.x_train[indices], targets, parts)
            steps += 1
            if training.max_steps and steps >= training.max_steps:
                return trainer
    return trainer
