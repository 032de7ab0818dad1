"""Small jobs and datasets shared by the runtime tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpnn_async.data import Dataset
from mpnn_async.runtime.job import JobSpec

MODEL = {
    "input": 6,
    "layers": [
        {"width": 7, "activation": "tanh"},
        {"width": 5, "activation": "gelu"},
        {"width": 4, "activation": "identity"},
    ],
    "loss": "softmax_cross_entropy",
    "dtype": "float64",
    "seed": 3,
}

# One plan per strategy, and a mixed one; every plan splits every layer it can.
PLANS: dict[str, dict[str, Any]] = {
    "count": {
        "partitions": ["a", "b", "c"],
        "layers": [
            {"layers": [1], "strategy": "count", "counts": {"a": 3, "b": 2, "c": 2}},
            {"layers": [2], "strategy": "count", "counts": {"a": 1, "b": 2, "c": 2}},
            {"layers": [3], "strategy": "count", "counts": {"a": 2, "b": 1, "c": 1}},
        ],
    },
    "percent": {
        "partitions": ["a", "b", "c"],
        "default": {"strategy": "percent", "shares": {"a": 50, "b": 30, "c": 20}},
    },
    "ids": {
        "partitions": ["a", "b"],
        "layers": [
            {"layers": [1], "strategy": "ids", "ids": {"a": [0, 2, 4, 6], "b": [1, 3, 5]}},
            {"layers": [2], "strategy": "ids", "ids": {"a": [4], "b": ["0-3"]}},
            {"layers": [3], "strategy": "ids", "ids": {"a": [1, 3], "b": [0, 2]}},
        ],
    },
    "whole": {
        "partitions": ["a", "b", "c"],
        "layers": [
            {"layers": [1], "strategy": "whole", "partition": "a"},
            {"layers": [2], "strategy": "whole", "partition": "b"},
            {"layers": [3], "strategy": "whole", "partition": "c"},
        ],
    },
    "mixed": {
        "partitions": ["a", "b", "c"],
        "layers": [
            {"layers": [1], "strategy": "percent", "shares": {"a": 50, "b": 30, "c": 20}},
            {"layers": [2], "strategy": "ids", "ids": {"b": [0, 3], "c": [1, 2, 4]}},
            {"layers": [3], "strategy": "whole", "partition": "a"},
        ],
    },
}


def make_job(
    name: str,
    plan: dict[str, Any],
    *,
    optimizer: dict[str, Any] | None = None,
    epochs: int = 2,
    batch_rows: int = 8,
    micro_batch_rows: int = 3,
    in_flight: int = 2,
    max_steps: int = 0,
    persist_every_steps: int = 1,
) -> JobSpec:
    return JobSpec.from_dict(
        {
            "job": {
                "name": name,
                "epochs": epochs,
                "batch_rows": batch_rows,
                "micro_batch_rows": micro_batch_rows,
                "in_flight": in_flight,
                "seed": 5,
                "max_steps": max_steps,
                "persist_every_steps": persist_every_steps,
            },
            "model": MODEL,
            "plan": plan,
            "optimizer": optimizer or {"kind": "adam", "learning_rate": 0.05},
            "dataset": {"name": "digits"},
        }
    )


def synthetic_dataset(*, train_rows: int = 20, test_rows: int = 9, seed: int = 0) -> Dataset:
    """Random features with labels from a fixed linear rule (learnable, 4 classes)."""
    rng = np.random.default_rng(seed)
    rule = rng.standard_normal((MODEL["input"], 4))
    x = rng.standard_normal((train_rows + test_rows, MODEL["input"]))
    y = np.argmax(x @ rule, axis=1).astype(np.int64)
    return Dataset(
        name="synthetic",
        x_train=x[:train_rows],
        y_train=y[:train_rows],
        x_test=x[train_rows:],
        y_test=y[train_rows:],
        classes=4,
        features=MODEL["input"],
    )


def max_abs_difference(left: list[tuple[np.ndarray, np.ndarray]], right: list[tuple[np.ndarray, np.ndarray]]) -> float:
    worst = 0.0
    for (w1, b1), (w2, b2) in zip(left, right, strict=True):
        worst = max(worst, float(np.max(np.abs(w1 - w2))), float(np.max(np.abs(b1 - b2))))
    return worst
