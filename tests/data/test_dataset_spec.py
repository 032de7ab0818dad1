from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mpnn_async.data import DatasetSpec, FileFormat, Scaling
from mpnn_async.errors import ConfigError


def test_bundled_name_uses_defaults() -> None:
    spec = DatasetSpec.from_dict({"name": "digits"})

    assert spec.name == "digits"
    assert spec.path is None
    assert spec.test_fraction == 0.2
    assert spec.seed == 0
    assert spec.scale is Scaling.STANDARDIZE
    assert spec.limit is None
    assert spec.display_name == "digits"


def test_every_field_is_read() -> None:
    spec = DatasetSpec.from_dict(
        {
            "path": "data/train.csv",
            "format": "csv",
            "label_column": "digit",
            "header": True,
            "delimiter": ";",
            "test_fraction": 0.25,
            "seed": 7,
            "scale": "unit",
            "limit": 100,
        }
    )

    assert spec.path == Path("data/train.csv")
    assert spec.format is FileFormat.CSV
    assert spec.label_column == "digit"
    assert spec.header is True
    assert spec.delimiter == ";"
    assert spec.test_fraction == 0.25
    assert spec.seed == 7
    assert spec.scale is Scaling.UNIT
    assert spec.limit == 100
    assert spec.display_name == "train.csv"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("x.npz", FileFormat.NPZ),
        ("x.NPZ", FileFormat.NPZ),
        ("x.csv", FileFormat.CSV),
        ("dir/x.csv.gz", FileFormat.CSV),
    ],
)
def test_format_inferred_from_suffix(path: str, expected: FileFormat) -> None:
    assert DatasetSpec.from_dict({"path": path}).format is expected


@pytest.mark.parametrize(
    "table",
    [
        {"name": "mnist-5k", "test_fraction": 0.1, "seed": 3, "scale": "none", "limit": 50},
        {"path": "a.npz", "x_key": "images", "y_key": "targets"},
        {"path": "a.csv", "label_column": 0, "header": True, "delimiter": "\t", "test_fraction": 0},
        {"path": "img-idx3-ubyte.gz", "format": "idx", "labels_path": "lbl-idx1-ubyte.gz"},
    ],
)
def test_to_dict_round_trips(table: dict[str, Any]) -> None:
    spec = DatasetSpec.from_dict(table)

    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    for key, value in table.items():
        assert spec.to_dict()[key] == value


def test_resolve_paths_anchors_relative_paths(tmp_path: Path) -> None:
    spec = DatasetSpec.from_dict(
        {"path": "images.idx", "format": "idx", "labels_path": "/abs/labels.idx"}
    )

    resolved = spec.resolve_paths(tmp_path)

    assert resolved.path == tmp_path / "images.idx"
    assert resolved.labels_path == Path("/abs/labels.idx")
    assert spec.path == Path("images.idx")


@pytest.mark.parametrize(
    ("table", "field", "message_part"),
    [
        ({}, "dataset", "neither name nor path"),
        ({"name": "digits", "path": "x.npz"}, "dataset", "both name and path"),
        ({"name": "cifar"}, "dataset.name", "unknown dataset 'cifar'"),
        ({"name": "digits", "format": "csv"}, "dataset.format", "only to a dataset read from path"),
        ({"name": "digits", "x_key": "a"}, "dataset.x_key", "only to a dataset read from path"),
        ({"path": ""}, "dataset.path", "non-empty path"),
        ({"path": 3}, "dataset.path", "non-empty path"),
        ({"path": "data/x.bin"}, "dataset.format", "does not show the format"),
        ({"path": "x.npz", "format": "parquet"}, "dataset.format", "unknown format"),
        ({"path": "x.idx", "format": "idx"}, "dataset.labels_path", "missing"),
        ({"path": "x.npz", "labels_path": "y"}, "dataset.labels_path", "only to format 'idx'"),
        ({"path": "x.csv", "x_key": "a"}, "dataset.x_key", "only to format 'npz'"),
        ({"path": "x.npz", "header": True}, "dataset.header", "only to format 'csv'"),
        ({"path": "x.npz", "x_key": ""}, "dataset.x_key", "non-empty string"),
        ({"path": "x.csv", "label_column": True}, "dataset.label_column", "index or name"),
        ({"path": "x.csv", "label_column": 1.5}, "dataset.label_column", "index or name"),
        ({"path": "x.csv", "label_column": "y"}, "dataset.label_column", "no header row"),
        ({"path": "x.csv", "header": "yes"}, "dataset.header", "true or false"),
        ({"path": "x.csv", "delimiter": ",,"}, "dataset.delimiter", "one separator"),
        ({"path": "x.csv", "delimiter": "."}, "dataset.delimiter", "one separator"),
        ({"name": "digits", "test_fraction": 1.0}, "dataset.test_fraction", "below 1"),
        ({"name": "digits", "test_fraction": -0.1}, "dataset.test_fraction", "at least 0"),
        ({"name": "digits", "test_fraction": "0.2"}, "dataset.test_fraction", "a number"),
        ({"name": "digits", "test_fraction": float("nan")}, "dataset.test_fraction", "a number"),
        ({"name": "digits", "test_fraction": True}, "dataset.test_fraction", "a number"),
        ({"name": "digits", "seed": -1}, "dataset.seed", "non-negative integer"),
        ({"name": "digits", "seed": 1.0}, "dataset.seed", "non-negative integer"),
        ({"name": "digits", "scale": "minmax"}, "dataset.scale", "unknown scaling"),
        ({"name": "digits", "limit": 0}, "dataset.limit", "positive integer"),
        ({"name": "digits", "limit": False}, "dataset.limit", "positive integer"),
        ({"name": "digits", "shuffle": True}, "dataset.shuffle", "unknown key"),
    ],
)
def test_invalid_field_is_named(table: dict[str, Any], field: str, message_part: str) -> None:
    with pytest.raises(ConfigError) as caught:
        DatasetSpec.from_dict(table)

    assert caught.value.field == field
    assert message_part in str(caught.value)


def test_custom_field_prefix_is_used() -> None:
    with pytest.raises(ConfigError) as caught:
        DatasetSpec.from_dict({"name": "digits", "seed": -1}, field="jobs[0].dataset")

    assert caught.value.field == "jobs[0].dataset.seed"


def test_non_table_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        DatasetSpec.from_dict(["digits"])  # type: ignore[arg-type]

    assert caught.value.field == "dataset"


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="exactly one of name and path"):
        DatasetSpec()
    with pytest.raises(ConfigError, match="dataset.test_fraction"):
        DatasetSpec(name="digits", test_fraction=2.0)
    with pytest.raises(ConfigError, match="dataset.labels_path"):
        DatasetSpec(path=Path("x"), format=FileFormat.IDX)


def test_spec_is_frozen() -> None:
    spec = DatasetSpec.from_dict({"name": "digits"})

    with pytest.raises(AttributeError):
        spec.seed = 1  # type: ignore[misc]
