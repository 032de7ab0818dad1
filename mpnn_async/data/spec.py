"""The dataset spec: the `[dataset]` table of a job file, validated field by field."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpnn_async.errors import ConfigError

__all__ = ["BUNDLED_DATASETS", "DatasetSpec", "FileFormat", "Scaling"]

# Datasets that ship inside an installed package, so they load without a download.
BUNDLED_DATASETS = ("digits", "mnist-5k")


class FileFormat(enum.StrEnum):
    NPZ = "npz"  # NumPy archive with a feature array and a label array
    CSV = "csv"  # one sample per row, numbers only, one column is the label
    IDX = "idx"  # the MNIST format: an images file and a labels file


class Scaling(enum.StrEnum):
    STANDARDIZE = "standardize"  # (x - mean) / std per feature, from the training split
    UNIT = "unit"  # x / max value, so pixels land in [0, 1]
    NONE = "none"  # raw values, only cast to the requested dtype


# Options that only one file format reads, and the format that reads them.
_FORMAT_OPTIONS = {
    "labels_path": FileFormat.IDX,
    "x_key": FileFormat.NPZ,
    "y_key": FileFormat.NPZ,
    "label_column": FileFormat.CSV,
    "header": FileFormat.CSV,
    "delimiter": FileFormat.CSV,
}
_KNOWN_KEYS = frozenset(
    {"name", "path", "format", "test_fraction", "seed", "scale", "limit", *_FORMAT_OPTIONS}
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSpec:
    """The source of a dataset's samples, its train/test split and its scaling.

    Exactly one of `name` (a bundled dataset) and `path` (a user file) is set.
    A relative path is opened relative to the current directory at load time,
    unless `resolve_paths` has anchored it to the job file's directory. In a job file:

        [dataset]
        path = "data/train.npz"  # or name = "digits" or name = "mnist-5k"
        test_fraction = 0.2
        seed = 0
        scale = "standardize"
    """

    name: str | None = None  # one of BUNDLED_DATASETS
    path: Path | None = None  # the samples file (for IDX, the images file)
    format: FileFormat | None = None
    labels_path: Path | None = None  # IDX only: the labels file
    x_key: str = "x"  # npz only: name of the feature array
    y_key: str = "y"  # npz only: name of the label array
    label_column: int | str = -1  # csv only: index (negative from the end) or header name
    header: bool = False  # csv only: whether the first line contains column names
    delimiter: str = ","  # csv only
    test_fraction: float = 0.2  # share of samples in the test split, in [0, 1)
    seed: int = 0  # seeds the train/test split
    scale: Scaling = Scaling.STANDARDIZE
    limit: int | None = None  # keep only the first `limit` samples, before the split

    def __post_init__(self) -> None:
        _check_source(self)
        _check_split_fields(self, "dataset")

    @property
    def display_name(self) -> str:
        """The bundled name, or the file name of `path`."""
        if self.path is not None:
            return self.path.name
        return str(self.name)

    def resolve_paths(self, base_dir: Path) -> DatasetSpec:
        """Return a copy whose relative paths are taken relative to `base_dir`."""
        return dataclasses.replace(
            self,
            path=_anchor(self.path, base_dir),
            labels_path=_anchor(self.labels_path, base_dir),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the `[dataset]` table that `from_dict` turns back into this spec."""
        data: dict[str, Any] = {}
        if self.name is not None:
            data["name"] = self.name
        else:
            data["path"] = str(self.path)
            data["format"] = str(self.format)
            for option, file_format in _FORMAT_OPTIONS.items():
                if file_format is self.format:
                    value = getattr(self, option)
                    data[option] = str(value) if isinstance(value, Path) else value
        data["test_fraction"] = self.test_fraction
        data["seed"] = self.seed
        data["scale"] = str(self.scale)
        if self.limit is not None:
            data["limit"] = self.limit
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, field: str = "dataset") -> DatasetSpec:
        """Build a spec from the `[dataset]` table of a job file, naming any bad field.

        Without `format`, a path ending in .npz, .csv or .csv.gz picks its format.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(field, "must be a table", fix='for example {name = "digits"}')
        for key in data:
            if key not in _KNOWN_KEYS:
                raise ConfigError(
                    f"{field}.{key}", "unknown key", fix=f"use one of {sorted(_KNOWN_KEYS)}"
                )

        source = _source_fields(data, field)
        split: dict[str, Any] = {
            "test_fraction": _test_fraction(
                data.get("test_fraction", 0.2), f"{field}.test_fraction"
            ),
            "seed": _non_negative_int(data.get("seed", 0), f"{field}.seed"),
            "scale": _scaling(data.get("scale", "standardize"), f"{field}.scale"),
            "limit": _optional_positive_int(data.get("limit"), f"{field}.limit"),
        }
        return cls(**source, **split)


def _anchor(path: Path | None, base_dir: Path) -> Path | None:
    if path is None or path.is_absolute():
        return path
    return base_dir / path


def _source_fields(data: Mapping[str, Any], field: str) -> dict[str, Any]:
    """Validate name or path, the format and the options of that format."""
    has_name = "name" in data
    has_path = "path" in data
    if has_name and has_path:
        raise ConfigError(
            field,
            "sets both name and path",
            fix="keep name for a bundled dataset or path for a file",
        )
    if not has_name and not has_path:
        raise ConfigError(
            field,
            "sets neither name nor path",
            fix=f'set name to one of {list(BUNDLED_DATASETS)} or path = "data/x.npz"',
        )

    if has_name:
        name = data["name"]
        if name not in BUNDLED_DATASETS:
            raise ConfigError(
                f"{field}.name",
                f"unknown dataset {name!r}",
                fix=f"use one of {list(BUNDLED_DATASETS)}, or path for a file of your own",
            )
        for key in ("format", *_FORMAT_OPTIONS):
            if key in data:
                raise ConfigError(
                    f"{field}.{key}", "applies only to a dataset read from path", fix="remove it"
                )
        return {"name": name}

    path = _path(data["path"], f"{field}.path")
    file_format = _file_format(data.get("format"), path, f"{field}.format")
    fields: dict[str, Any] = {"path": path, "format": file_format}
    for option, option_format in _FORMAT_OPTIONS.items():
        if option not in data:
            continue
        if option_format is not file_format:
            raise ConfigError(
                f"{field}.{option}",
                f"applies only to format {str(option_format)!r}, not {str(file_format)!r}",
                fix="remove it",
            )
        fields[option] = _format_option(option, data[option], f"{field}.{option}")

    if file_format is FileFormat.IDX and "labels_path" not in fields:
        raise ConfigError(
            f"{field}.labels_path",
            "missing; an IDX dataset needs a labels file next to the images file",
            fix='set labels_path = "train-labels-idx1-ubyte.gz"',
        )
    if isinstance(fields.get("label_column"), str) and not fields.get("header", False):
        raise ConfigError(
            f"{field}.label_column",
            "is a column name, but the CSV file has no header row",
            fix="set header = true, or give the column index",
        )
    return fields


def _format_option(option: str, value: Any, field: str) -> Any:
    if option == "labels_path":
        return _path(value, field)
    if option in ("x_key", "y_key"):
        if not isinstance(value, str) or not value:
            raise ConfigError(field, f"must be a non-empty string, got {value!r}")
        return value
    if option == "label_column":
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise ConfigError(
                field, f"must be a column index or name, got {value!r}", fix="for example -1 or 0"
            )
        return value
    if option == "header":
        if not isinstance(value, bool):
            raise ConfigError(field, f"must be true or false, got {value!r}")
        return value
    if option != "delimiter":
        raise AssertionError(f"no validator for dataset option {option!r}")
    if not isinstance(value, str) or len(value) != 1 or value in "\r\n\"'0123456789.-+":
        raise ConfigError(
            field, f"must be one separator character, got {value!r}", fix='for example "," or ";"'
        )
    return value


def _path(value: Any, field: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, f"must be a non-empty path string, got {value!r}")
    return Path(value)


def _file_format(value: Any, path: Path, field: str) -> FileFormat:
    if value is None:
        lowered = path.name.lower()
        if lowered.endswith(".npz"):
            return FileFormat.NPZ
        if lowered.endswith((".csv", ".csv.gz")):
            return FileFormat.CSV
        raise ConfigError(
            field,
            f"missing, and the file name {path.name!r} does not show the format",
            fix="set format to npz, csv or idx",
        )
    try:
        return FileFormat(value)
    except ValueError:
        raise ConfigError(field, f"unknown format {value!r}", fix="use npz, csv or idx") from None


def _test_fraction(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, f"must be a number, got {value!r}", fix="for example 0.2")
    if not 0.0 <= value < 1.0:
        raise ConfigError(
            field,
            f"must be at least 0 and below 1, got {value!r}",
            fix="for example 0.2 for a fifth of the samples; 0 leaves no test split",
        )
    return float(value)


def _scaling(value: Any, field: str) -> Scaling:
    try:
        return Scaling(value)
    except ValueError:
        choices = ", ".join(member.value for member in Scaling)
        raise ConfigError(
            field, f"unknown scaling {value!r}", fix=f"use one of {choices}"
        ) from None


def _non_negative_int(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(field, f"must be a non-negative integer, got {value!r}")
    return value


def _optional_positive_int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(
            field,
            f"must be a positive integer, got {value!r}",
            fix="or remove it to use every sample",
        )
    return value


def _check_source(spec: DatasetSpec) -> None:
    """Reject a spec built directly (not through from_dict) whose source is inconsistent."""
    if (spec.name is None) == (spec.path is None):
        raise ConfigError("dataset", "needs exactly one of name and path")
    if spec.name is not None and spec.name not in BUNDLED_DATASETS:
        raise ConfigError(
            "dataset.name",
            f"unknown dataset {spec.name!r}",
            fix=f"use one of {list(BUNDLED_DATASETS)}",
        )
    if spec.path is not None and spec.format is None:
        raise ConfigError("dataset.format", "missing", fix="set format to npz, csv or idx")
    if spec.format is FileFormat.IDX and spec.labels_path is None:
        raise ConfigError("dataset.labels_path", "missing; an IDX dataset needs a labels file")


def _check_split_fields(spec: DatasetSpec, field: str) -> None:
    _test_fraction(spec.test_fraction, f"{field}.test_fraction")
    _non_negative_int(spec.seed, f"{field}.seed")
    _optional_positive_int(spec.limit, f"{field}.limit")
    if not isinstance(spec.scale, Scaling):
        raise ConfigError(f"{field}.scale", f"must be a Scaling, got {spec.scale!r}")
