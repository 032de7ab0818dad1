from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mpnn_async.data import Dataset, DatasetSpec, load_dataset, stratified_split
from mpnn_async.errors import ConfigError, InvalidInputError

CLASS_COUNTS = (50, 30, 20)


def raw_samples() -> tuple[np.ndarray, np.ndarray]:
    """Make 100 samples of 3 unequal classes.

    Feature 0 is the sample's row number, so tests can tell which rows a split took.
    Feature 3 is constant.
    """
    rng = np.random.default_rng(21)
    labels = rng.permutation(np.repeat(np.arange(3), CLASS_COUNTS))
    x = np.column_stack(
        [
            np.arange(100.0),
            rng.normal(loc=5.0, scale=3.0, size=100),
            rng.uniform(-40.0, 10.0, size=100),
            np.full(100, 0.1),
        ]
    )
    return x, labels


@pytest.fixture
def npz_path(tmp_path: Path) -> Path:
    x, y = raw_samples()
    path = tmp_path / "samples.npz"
    np.savez(path, x=x, y=y)
    return path


def load(path: Path, dtype: str = "float64", **fields: Any) -> Dataset:
    return load_dataset(DatasetSpec.from_dict({"path": str(path), **fields}), dtype=dtype)


def row_numbers(x: np.ndarray) -> np.ndarray:
    return x[:, 0].astype(np.int64)


def test_split_is_disjoint_and_complete(npz_path: Path) -> None:
    dataset = load(npz_path, scale="none")

    train_rows = row_numbers(dataset.x_train)
    test_rows = row_numbers(dataset.x_test)
    assert len(test_rows) == 20
    assert len(train_rows) == 80
    assert set(train_rows).isdisjoint(test_rows)
    assert sorted([*train_rows, *test_rows]) == list(range(100))
    assert np.all(np.diff(train_rows) > 0)
    assert np.all(np.diff(test_rows) > 0)


def test_split_is_stratified(npz_path: Path) -> None:
    dataset = load(npz_path)

    assert np.bincount(dataset.y_test).tolist() == [10, 6, 4]
    assert np.bincount(dataset.y_train).tolist() == [40, 24, 16]


def test_labels_follow_their_samples(npz_path: Path) -> None:
    x, y = raw_samples()
    dataset = load(npz_path, scale="none")

    assert np.array_equal(dataset.y_train, y[row_numbers(dataset.x_train)])
    assert np.array_equal(dataset.y_test, y[row_numbers(dataset.x_test)])


def test_same_seed_gives_identical_arrays(npz_path: Path) -> None:
    first = load(npz_path, seed=3)
    second = load(npz_path, seed=3)

    for name in ("x_train", "y_train", "x_test", "y_test", "feature_shift", "feature_scale"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name


def test_other_seed_gives_other_split(npz_path: Path) -> None:
    first = load(npz_path, seed=3, scale="none")
    second = load(npz_path, seed=4, scale="none")

    assert not np.array_equal(row_numbers(first.x_test), row_numbers(second.x_test))


def test_standardize_uses_training_statistics(npz_path: Path) -> None:
    x, _ = raw_samples()
    dataset = load(npz_path)
    unscaled = load(npz_path, scale="none")
    raw_train = x[row_numbers(unscaled.x_train)]
    raw_test = x[row_numbers(unscaled.x_test)]

    train_mean = raw_train.mean(axis=0)
    train_std = raw_train.std(axis=0)
    assert np.allclose(dataset.feature_shift[:3], train_mean[:3], rtol=0, atol=1e-12)
    assert np.allclose(dataset.feature_scale[:3], train_std[:3], rtol=0, atol=1e-12)
    assert np.allclose(dataset.x_train[:, :3].mean(axis=0), 0.0, atol=1e-12)
    assert np.allclose(dataset.x_train[:, :3].std(axis=0), 1.0, atol=1e-12)
    expected_test = (raw_test[:, :3] - train_mean[:3]) / train_std[:3]
    assert np.allclose(dataset.x_test[:, :3], expected_test, rtol=1e-12, atol=1e-12)


def test_standardize_maps_constant_feature_to_zero(npz_path: Path) -> None:
    dataset = load(npz_path)

    assert dataset.feature_scale[3] == 1.0
    assert dataset.feature_shift[3] == 0.1
    assert np.all(dataset.x_train[:, 3] == 0.0)
    assert np.all(dataset.x_test[:, 3] == 0.0)


def test_unit_divides_by_training_max_abs(npz_path: Path) -> None:
    x, _ = raw_samples()
    dataset = load(npz_path, scale="unit")
    unscaled = load(npz_path, scale="none")
    expected_divisor = np.abs(x[row_numbers(unscaled.x_train)]).max()

    assert np.all(dataset.feature_scale == expected_divisor)
    assert np.all(dataset.feature_shift == 0.0)
    assert np.abs(dataset.x_train).max() == 1.0
    assert np.allclose(dataset.x_test, unscaled.x_test / expected_divisor, rtol=1e-15, atol=0)


def test_none_keeps_raw_values(npz_path: Path) -> None:
    x, _ = raw_samples()
    dataset = load(npz_path, scale="none")

    assert np.array_equal(dataset.x_train, x[row_numbers(dataset.x_train)])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_arrays_have_requested_layout(npz_path: Path, dtype: str) -> None:
    dataset = load(npz_path, dtype=dtype)

    for array in (dataset.x_train, dataset.x_test):
        assert array.dtype == np.dtype(dtype)
        assert array.flags.c_contiguous
        assert not array.flags.writeable
    for array in (dataset.y_train, dataset.y_test):
        assert array.dtype == np.int64
        assert not array.flags.writeable
    assert dataset.features == 4
    assert dataset.classes == 3
    assert dataset.name == "samples.npz"


def test_transform_matches_test_split(npz_path: Path) -> None:
    x, _ = raw_samples()
    dataset = load(npz_path, dtype="float32")
    unscaled = load(npz_path, scale="none")

    transformed = dataset.transform(x[row_numbers(unscaled.x_test)])

    assert transformed.dtype == np.float32
    assert np.array_equal(transformed, dataset.x_test)
    with pytest.raises(InvalidInputError, match=r"shape \(n, 4\), got \(2, 3\)"):
        dataset.transform(np.zeros((2, 3)))


def test_repr_shows_sizes(npz_path: Path) -> None:
    dataset = load(npz_path, dtype="float32")

    assert repr(dataset) == (
        "<Dataset samples.npz train=80 test=20 features=4 classes=3 dtype=float32>"
    )


def test_limit_keeps_first_samples(npz_path: Path) -> None:
    dataset = load(npz_path, scale="none", limit=30)

    rows = np.concatenate([row_numbers(dataset.x_train), row_numbers(dataset.x_test)])
    assert sorted(rows.tolist()) == list(range(30))
    assert dataset.classes == 3


def test_limit_beyond_samples_is_rejected(npz_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(npz_path, limit=101)

    assert caught.value.field == "dataset.limit"
    assert "101 exceeds the 100 samples of samples.npz" in str(caught.value)


def test_zero_test_fraction_gives_empty_test(npz_path: Path) -> None:
    dataset = load(npz_path, test_fraction=0)

    assert dataset.x_test.shape == (0, 4)
    assert dataset.y_test.shape == (0,)
    assert dataset.x_train.shape == (100, 4)


@pytest.mark.parametrize(
    ("fields", "message_part"),
    [
        ({"test_fraction": 0.004}, "selects no test sample"),
        ({"test_fraction": 0.75, "limit": 2}, "leaves no training sample"),
    ],
)
def test_unusable_test_fraction_is_rejected(
    npz_path: Path, fields: dict[str, Any], message_part: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(npz_path, **fields)

    assert caught.value.field == "dataset.test_fraction"
    assert message_part in str(caught.value)


@pytest.mark.parametrize("dtype", ["float16", "int64", "not-a-dtype", None])
def test_unsupported_dtype_is_rejected(npz_path: Path, dtype: str | None) -> None:
    with pytest.raises(InvalidInputError, match="float32 or float64"):
        load(npz_path, dtype=dtype)  # type: ignore[arg-type]


def test_csv_dataset_via_relative_path(tmp_path: Path) -> None:
    x, y = raw_samples()
    lines = ["label,a,b,c,d"] + [
        f"{label},{','.join(repr(float(value)) for value in row)}"
        for label, row in zip(y, x, strict=True)
    ]
    (tmp_path / "samples.csv.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    spec = DatasetSpec.from_dict(
        {"path": "samples.csv.gz", "header": True, "label_column": "label", "scale": "none"}
    ).resolve_paths(tmp_path)

    dataset = load_dataset(spec, dtype="float64")

    assert np.array_equal(dataset.x_train, x[row_numbers(dataset.x_train)])
    assert np.array_equal(dataset.y_train, y[row_numbers(dataset.x_train)])


def test_idx_dataset_uses_training_max(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 200, size=(40, 4, 4), dtype=np.uint8)
    labels = np.tile(np.arange(4, dtype=np.uint8), 10)
    (tmp_path / "images").write_bytes(
        bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 40, 4, 4) + images.tobytes()
    )
    (tmp_path / "labels").write_bytes(
        bytes([0, 0, 0x08, 1]) + struct.pack(">I", 40) + labels.tobytes()
    )
    spec = DatasetSpec.from_dict(
        {"path": "images", "format": "idx", "labels_path": "labels", "scale": "unit"}
    ).resolve_paths(tmp_path)

    dataset = load_dataset(spec, dtype="float32")

    assert dataset.features == 16
    assert dataset.classes == 4
    assert dataset.x_train.max() == 1.0
    assert dataset.x_train.min() >= 0.0
    assert np.bincount(dataset.y_test).tolist() == [2, 2, 2, 2]


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="absent.npz: cannot open"):
        load(tmp_path / "absent.npz")


def test_stratified_split_shares_leftover_by_remainder() -> None:
    labels = np.repeat(np.arange(3), [5, 3, 2])

    train, test = stratified_split(labels, test_fraction=0.5, seed=0)

    # Shares 2.5, 1.5 and 1.0 round down to 2, 1, 1; the leftover sample goes to the
    # largest remainder, a tie between labels 0 and 1 that the smaller label wins.
    assert np.bincount(labels[test], minlength=3).tolist() == [3, 1, 1]
    assert np.intersect1d(train, test).size == 0
    assert np.union1d(train, test).tolist() == list(range(10))


def test_stratified_split_rounds_half_up() -> None:
    labels = np.zeros(5, dtype=np.int64)

    _, test = stratified_split(labels, test_fraction=0.5, seed=0)

    assert test.size == 3


def test_dataset_rejects_out_of_range_labels() -> None:
    with pytest.raises(InvalidInputError, match=r"labels must lie in \[0, 2\), got 0..2"):
        Dataset(
            name="manual",
            x_train=np.zeros((3, 2)),
            y_train=np.array([0, 1, 2]),
            x_test=np.zeros((0, 2)),
            y_test=np.zeros(0, dtype=np.int64),
            classes=2,
            features=2,
        )


def test_dataset_rejects_mismatched_features() -> None:
    with pytest.raises(InvalidInputError, match="x has 2 features, expected 3"):
        Dataset(
            name="manual",
            x_train=np.zeros((1, 2)),
            y_train=np.array([0]),
            x_test=np.zeros((0, 2)),
            y_test=np.zeros(0, dtype=np.int64),
            classes=1,
            features=3,
        )
