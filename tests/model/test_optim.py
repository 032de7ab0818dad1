"""Optimizer settings and update rules, checked against their formulas."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from mpnn_async.errors import ConfigError
from mpnn_async.model.optim import (
    UPDATE_CHUNK_BYTES,
    OptimizerKind,
    OptimizerSpec,
    apply_update,
    new_scratch,
    row_chunks,
    update_rows,
)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_zero_gradient_leaves_weight_unchanged(dtype: type) -> None:
    spec = OptimizerSpec(kind=OptimizerKind.ADAM, learning_rate=0.1)
    weights = np.array([[0.5, -1.25], [3.0, 0.0]], dtype=dtype)
    before = weights.copy()
    state: dict[str, np.ndarray] = {}

    with np.errstate(all="raise"):
        for step in range(1, 4):
            apply_update(spec, weights, np.zeros_like(weights), state, step)

    assert np.all(np.isfinite(weights))
    np.testing.assert_array_equal(weights, before)
    assert weights.dtype == dtype


def test_sgd_formula() -> None:
    spec = OptimizerSpec(kind=OptimizerKind.SGD, learning_rate=0.5, weight_decay=0.1)
    weights = np.array([1.0, -2.0, 4.0])
    gradient = np.array([0.25, 0.5, -1.0])
    state: dict[str, np.ndarray] = {}

    apply_update(spec, weights, gradient, state, 1)

    np.testing.assert_array_equal(weights, [1.0 - 0.5 * 0.35, -2.0 - 0.5 * 0.3, 4.0 + 0.5 * 0.6])
    assert state == {}


def test_momentum_formula() -> None:
    spec = OptimizerSpec(kind=OptimizerKind.MOMENTUM, learning_rate=0.5, momentum=0.75)
    weights = np.array([1.0, -1.0])
    first = np.array([0.5, 1.0])
    second = np.array([-0.25, 2.0])
    state: dict[str, np.ndarray] = {}

    apply_update(spec, weights, first, state, 1)
    after_first = weights.copy()
    apply_update(spec, weights, second, state, 2)

    # The buffer starts as the first gradient, then buf = momentum * buf + g.
    np.testing.assert_allclose(after_first, [1.0 - 0.25, -1.0 - 0.5], rtol=1e-15)
    buffer = 0.75 * first + second
    np.testing.assert_allclose(state["momentum_buffer"], buffer, rtol=1e-15)
    np.testing.assert_allclose(weights, after_first - 0.5 * buffer, rtol=1e-15)
    # The buffer is a copy: updating it in place must not change the caller's gradient.
    assert first.tolist() == [0.5, 1.0]


def test_adam_first_step_moves_by_learning_rate() -> None:
    # After bias correction m_hat = g and v_hat = g**2 on step 1, so each
    # parameter moves by lr * g / (|g| + eps).
    spec = OptimizerSpec(kind=OptimizerKind.ADAM, learning_rate=0.01, eps=1e-8)
    weights = np.array([1.0, 1.0, 1.0])
    gradient = np.array([3.0, -1e-3, 1e-9])
    state: dict[str, np.ndarray] = {}

    apply_update(spec, weights, gradient, state, 1)

    expected = 1.0 - 0.01 * gradient / (np.abs(gradient) + 1e-8)
    np.testing.assert_allclose(weights, expected, rtol=1e-12)
    assert set(state) == {"exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("step", [0, -1])
def test_update_rejects_step_below_one(step: int) -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        apply_update(OptimizerSpec(), np.zeros(2), np.zeros(2), {}, step)


@pytest.mark.parametrize(
    ("kind", "state_names"),
    [("sgd", ()), ("momentum", ("momentum_buffer",)), ("adam", ("exp_avg", "exp_avg_sq"))],
)
def test_kind_string_selects_rule(kind: str, state_names: tuple[str, ...]) -> None:
    spec = OptimizerSpec(kind=kind)
    state: dict[str, np.ndarray] = {}

    apply_update(spec, np.ones(2), np.ones(2), state, 1)

    assert spec.kind is OptimizerKind(kind)
    assert spec.state_names() == state_names
    assert tuple(state) == state_names


BAD_OPTIMIZERS = [
    ({"kind": "rmsprop"}, "optimizer.kind"),
    ({"lr": 0.1}, "optimizer.lr"),
    ({"learning_rate": 0}, "optimizer.learning_rate"),
    ({"learning_rate": float("nan")}, "optimizer.learning_rate"),
    ({"learning_rate": "0.1"}, "optimizer.learning_rate"),
    ({"eps": -1e-8}, "optimizer.eps"),
    ({"momentum": 1.0}, "optimizer.momentum"),
    ({"momentum": True}, "optimizer.momentum"),
    ({"beta1": -0.1}, "optimizer.beta1"),
    ({"beta2": 1.5}, "optimizer.beta2"),
    ({"weight_decay": -0.01}, "optimizer.weight_decay"),
    ({"weight_decay": float("inf")}, "optimizer.weight_decay"),
]


@pytest.mark.parametrize(("data", "field"), BAD_OPTIMIZERS, ids=[f for _, f in BAD_OPTIMIZERS])
def test_from_dict_error_names_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        OptimizerSpec.from_dict(data)

    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_constructor_rejects_unknown_kind() -> None:
    with pytest.raises(ConfigError) as caught:
        OptimizerSpec(kind="lbfgs")

    assert caught.value.field == "optimizer.kind"
    assert caught.value.fix == "use sgd, momentum or adam"


def test_round_trip() -> None:
    spec = OptimizerSpec(kind=OptimizerKind.ADAM, learning_rate=3e-4, weight_decay=0.01)

    data = spec.to_dict()

    assert data["kind"] == "adam"
    assert OptimizerSpec.from_dict(data) == spec


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_rows_match_one_chunk(kind: str, dtype: type) -> None:
    # update_rows on chunks of 3 rows must give the numbers of one call on all rows.
    spec = OptimizerSpec(kind=kind, learning_rate=0.05, weight_decay=0.01)
    rng = np.random.default_rng(5)
    whole = rng.normal(size=(10, 7)).astype(dtype)
    chunked = whole.copy()
    whole_state = {name: np.zeros_like(whole) for name in spec.state_names()}
    chunked_state = {name: np.zeros_like(whole) for name in spec.state_names()}

    for step in range(1, 4):
        gradient = rng.normal(size=whole.shape).astype(dtype)
        update_rows(
            spec, whole, gradient, whole_state, step,
            first_use=step == 1, scratch=new_scratch(whole, chunk_bytes=whole.nbytes),
        )
        scratch = new_scratch(chunked, chunk_bytes=3 * 7 * whole.itemsize)
        assert scratch.shape == (2, 3, 7)
        for rows in row_chunks(chunked, chunk_bytes=3 * 7 * whole.itemsize):
            update_rows(
                spec, chunked[rows], gradient[rows],
                {name: array[rows] for name, array in chunked_state.items()}, step,
                first_use=step == 1, scratch=scratch,
            )

    np.testing.assert_array_equal(chunked, whole)
    for name in spec.state_names():
        np.testing.assert_array_equal(chunked_state[name], whole_state[name], err_msg=name)


def test_row_chunks_cover_every_row_once() -> None:
    array = np.zeros((10, 4), dtype=np.float64)

    chunks = list(row_chunks(array, chunk_bytes=3 * 4 * 8))

    assert chunks == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert list(row_chunks(array, chunk_bytes=1)) == [slice(i, i + 1) for i in range(10)]


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_update_allocates_no_parameter_sized_temporary(kind: str) -> None:
    # 16 MiB of parameters: whole-array expressions of the Adam formulas allocate three arrays of that size.
    spec = OptimizerSpec(kind=kind, learning_rate=0.01, weight_decay=0.01)
    parameter = np.ones((2048, 1024), dtype=np.float64)
    gradient = np.full_like(parameter, 0.5)
    state: dict[str, np.ndarray] = {}
    apply_update(spec, parameter, gradient, state, 1)

    tracemalloc.start()
    try:
        apply_update(spec, parameter, gradient, state, 2)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak_bytes <= 2 * UPDATE_CHUNK_BYTES + (256 << 10), f"peak {peak_bytes} bytes"


def test_update_rejects_gradient_of_other_shape() -> None:
    with pytest.raises(ValueError, match=r"gradient shape \(3,\) does not match the parameter's \(2,\)"):
        apply_update(OptimizerSpec(), np.zeros(2), np.zeros(3), {}, 1)


def test_update_of_zero_dimensional_parameter() -> None:
    spec = OptimizerSpec(kind=OptimizerKind.MOMENTUM, learning_rate=0.5, momentum=0.5)
    parameter = np.array(1.0)
    state: dict[str, np.ndarray] = {}

    apply_update(spec, parameter, np.array(2.0), state, 1)
    apply_update(spec, parameter, np.array(2.0), state, 2)

    # Step 1: buf = 2, p = 1 - 1 = 0. Step 2: buf = 0.5 * 2 + 2 = 3, p = 0 - 1.5.
    assert parameter.shape == ()
    assert float(state["momentum_buffer"]) == 3.0
    assert float(parameter) == -1.5
