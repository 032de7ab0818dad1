"""Optimizer state in a file: the same numbers as in memory, bounded memory, loads and persists."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mpnn_async.errors import StoreError
from mpnn_async.model.optim import OptimizerKind, OptimizerSpec, apply_update
from mpnn_async.runtime.state_file import OptimizerStateFile, apply_named_update
from mpnn_async.store import Store

OPTIMIZERS = [
    OptimizerSpec(kind=OptimizerKind.SGD, learning_rate=0.1, weight_decay=0.01),
    OptimizerSpec(kind=OptimizerKind.MOMENTUM, learning_rate=0.05, momentum=0.8),
    OptimizerSpec(kind=OptimizerKind.ADAM, learning_rate=0.01, weight_decay=0.05),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", OPTIMIZERS, ids=lambda spec: str(spec.kind))
def test_file_updates_equal_memory_updates(tmp_path: Path, spec: OptimizerSpec, dtype: type) -> None:
    rng = np.random.default_rng(7)
    in_memory = {"W1": rng.normal(size=(37, 11)).astype(dtype), "b1": rng.normal(size=37).astype(dtype)}
    in_file = {name: array.copy() for name, array in in_memory.items()}
    memory_state: dict[str, dict[str, np.ndarray]] = {}
    # Chunks of 5 rows of W1, so every update crosses several chunks and a partial one.
    state_file = OptimizerStateFile(tmp_path, chunk_bytes=5 * 11 * np.dtype(dtype).itemsize)

    for step in range(1, 5):
        for name in in_memory:
            gradient = rng.normal(size=in_memory[name].shape).astype(dtype)
            apply_named_update(spec, memory_state, name, in_memory[name], gradient, step)
            apply_named_update(spec, state_file, name, in_file[name], gradient, step)

    for name in in_memory:
        np.testing.assert_array_equal(in_file[name], in_memory[name], err_msg=name)
    assert sorted(state_file.names()) == sorted(
        (name, state_name) for name in memory_state for state_name in memory_state[name]
    )
    for name, named in memory_state.items():
        for state_name, array in named.items():
            np.testing.assert_array_equal(state_file.read(name, state_name), array, err_msg=state_name)


def test_momentum_restarts_at_step_one(tmp_path: Path) -> None:
    spec = OptimizerSpec(kind=OptimizerKind.MOMENTUM, learning_rate=0.5, momentum=0.5)
    state_file = OptimizerStateFile(tmp_path)
    parameter = np.zeros(3)

    state_file.apply_update(spec, "b1", parameter, np.ones(3), 1)
    state_file.apply_update(spec, "b1", parameter, np.ones(3), 2)
    state_file.apply_update(spec, "b1", parameter, np.full(3, 4.0), 1)

    # A new run at step 1 starts the buffer as the gradient again, as torch.optim.SGD does.
    np.testing.assert_array_equal(state_file.read("b1", "momentum_buffer"), np.full(3, 4.0))


def test_file_has_no_name_in_directory(tmp_path: Path) -> None:
    state_file = OptimizerStateFile(tmp_path)
    state_file.apply_update(OptimizerSpec(kind="adam"), "W1", np.ones((4, 4)), np.ones((4, 4)), 1)

    assert list(tmp_path.iterdir()) == []
    assert state_file.size_bytes >= 2 * 4 * 4 * 8
    state_file.close()


def test_update_memory_is_a_few_chunks(tmp_path: Path) -> None:
    spec = OptimizerSpec(kind=OptimizerKind.ADAM, learning_rate=0.01)
    parameter = np.ones((2048, 1024))  # 16 MiB; Adam's state is 32 MiB more
    gradient = np.full_like(parameter, 0.25)
    state_file = OptimizerStateFile(tmp_path, chunk_bytes=1 << 20)
    state_file.apply_update(spec, "W1", parameter, gradient, 1)

    tracemalloc.start()
    try:
        state_file.apply_update(spec, "W1", parameter, gradient, 2)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Two state chunks and two scratch chunks.
    assert peak_bytes <= 4 * (1 << 20) + (256 << 10), f"peak {peak_bytes} bytes"


def test_load_and_persist_through_store(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store", create=True)
    exp_avg = np.arange(60.0).reshape(12, 5)
    store.commit(("p",), {"W1": np.ones((12, 5)), "W1.exp_avg": exp_avg}, expected_version=None)
    state_file = OptimizerStateFile(tmp_path, chunk_bytes=64)

    with store.open_version(("p",)) as reader:
        stored = reader.stored("W1.exp_avg")
        state_file.load("W1", "exp_avg", stored.dtype, stored.shape, reader.chunks(stored.name, 64))
    store.commit(("p",), {"W1": np.ones((12, 5)), **state_file.sources()}, expected_version=1)

    np.testing.assert_array_equal(state_file.read("W1", "exp_avg"), exp_avg)
    np.testing.assert_array_equal(store.read(("p",)).arrays["W1.exp_avg"], exp_avg)


def test_state_of_other_shape_is_rejected(tmp_path: Path) -> None:
    state_file = OptimizerStateFile(tmp_path)
    state_file.load("W1", "exp_avg", np.dtype(np.float64), (2, 3), [memoryview(bytes(48))])

    with pytest.raises(StoreError, match=r"W1.exp_avg is float64 \(2, 3\), but its parameter is float64 \(3, 2\)"):
        state_file.apply_update(OptimizerSpec(kind="adam"), "W1", np.ones((3, 2)), np.ones((3, 2)), 1)


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="--optimizer-state-dir"):
        OptimizerStateFile(tmp_path / "missing")


def test_sgd_keeps_no_state(tmp_path: Path) -> None:
    state_file = OptimizerStateFile(tmp_path)
    parameter = np.ones(4)
    expected = np.ones(4)

    state_file.apply_update(OptimizerSpec(kind="sgd", learning_rate=0.5), "b1", parameter, np.ones(4), 1)
    apply_update(OptimizerSpec(kind="sgd", learning_rate=0.5), expected, np.ones(4), {}, 1)

    np.testing.assert_array_equal(parameter, expected)
    assert state_file.names() == []
    assert state_file.size_bytes == 0
