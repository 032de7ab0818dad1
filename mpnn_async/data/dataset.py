"""Load a dataset spec into scaled train and test arrays."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from mpnn_async.data.bundled import load_bundled
from mpnn_async.data.files import load_csv, load_npz
from mpnn_async.data.idx import load_idx
from mpnn_async.data.samples import RawSamples
from mpnn_async.data.spec import DatasetSpec, FileFormat, Scaling
from mpnn_async.data.split import stratified_split
from mpnn_async.errors import ConfigError, InvalidInputError

__all__ = ["Dataset", "load_dataset"]

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclasses.dataclass(frozen=True, slots=True, eq=False, kw_only=True, repr=False)
class Dataset:
    """Scaled train and test samples with integer class labels.

    x arrays are (samples, features) in one float dtype, C-contiguous; y arrays
    are int64 labels in [0, classes). `load_dataset` also makes every array
    read-only. The scaling that produced x is x = (raw - feature_shift) /
    feature_scale; both default to the identity.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    features: int
    feature_shift: np.ndarray | None = None
    feature_scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_split(self, "train", self.x_train, self.y_train)
        _check_split(self, "test", self.x_test, self.y_test)
        if self.x_test.dtype != self.x_train.dtype:
            raise InvalidInputError(
                f"dataset {self.name}: x_test is {self.x_test.dtype}, "
                f"x_train is {self.x_train.dtype}"
            )
        if self.feature_shift is None:
            object.__setattr__(self, "feature_shift", np.zeros(self.features))
        if self.feature_scale is None:
            object.__setattr__(self, "feature_scale", np.ones(self.features))

    @property
    def dtype(self) -> np.dtype:
        return self.x_train.dtype

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale raw samples (for example an inference request) as the training split was."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.features:
            raise InvalidInputError(
                f"dataset {self.name}: expected samples of shape (n, {self.features}), "
                f"got {x.shape}"
            )
        scaled = (x - self.feature_shift) / self.feature_scale
        return np.ascontiguousarray(scaled, dtype=self.dtype)

    def __repr__(self) -> str:
        return (
            f"<Dataset {self.name} train={self.y_train.shape[0]} test={self.y_test.shape[0]} "
            f"features={self.features} classes={self.classes} dtype={self.dtype}>"
        )


def load_dataset(spec: DatasetSpec, *, dtype: str | np.dtype | type) -> Dataset:
    """Load, split and scale the samples that `spec` describes.

    `spec.limit` keeps the first samples, then the split is stratified by class
    and seeded by `spec.seed` (see `stratified_split`). Scaling statistics come
    from the training split only. `standardize` subtracts each feature's mean and
    divides by its standard deviation, and maps a constant feature to 0. `unit`
    divides by the largest value a feature can take: 16 for digits, 255 for
    mnist-5k, and for a file the largest absolute value in the training split.
    The same spec always gives the same arrays.
    """
    float_dtype = _float_dtype(dtype)
    source = _load_source(spec)
    x, y = source.x, source.y
    if spec.limit is not None:
        if spec.limit > y.shape[0]:
            raise ConfigError(
                "dataset.limit",
                f"{spec.limit} exceeds the {y.shape[0]} samples of {spec.display_name}",
                fix=f"use at most {y.shape[0]}, or remove limit",
            )
        x, y = x[: spec.limit], y[: spec.limit]

    train_indices, test_indices = stratified_split(
        y, test_fraction=spec.test_fraction, seed=spec.seed
    )
    x_train_raw = x[train_indices].astype(np.float64)
    shift, scale = _scaling_statistics(spec.scale, x_train_raw, source.max_value)
    dataset = Dataset(
        name=spec.display_name,
        x_train=_frozen((x_train_raw - shift) / scale, float_dtype),
        y_train=_frozen(y[train_indices], np.dtype(np.int64)),
        x_test=_frozen((x[test_indices].astype(np.float64) - shift) / scale, float_dtype),
        y_test=_frozen(y[test_indices], np.dtype(np.int64)),
        classes=source.classes,
        features=x.shape[1],
        feature_shift=_frozen(shift, np.dtype(np.float64)),
        feature_scale=_frozen(scale, np.dtype(np.float64)),
    )
    logger.info(
        "dataset.loaded name=%s train=%d test=%d features=%d classes=%d scale=%s seed=%d",
        dataset.name,
        dataset.y_train.shape[0],
        dataset.y_test.shape[0],
        dataset.features,
        dataset.classes,
        spec.scale,
        spec.seed,
    )
    return dataset


def _load_source(spec: DatasetSpec) -> RawSamples:
    if spec.name is not None:
        return load_bundled(spec.name)

    assert spec.path is not None  # DatasetSpec guarantees name or path
    if spec.format is FileFormat.NPZ:
        x, y = load_npz(spec.path, x_key=spec.x_key, y_key=spec.y_key)
    elif spec.format is FileFormat.CSV:
        x, y = load_csv(
            spec.path, label_column=spec.label_column, header=spec.header, delimiter=spec.delimiter
        )
    else:
        assert spec.labels_path is not None  # DatasetSpec requires it for IDX
        x, y = load_idx(spec.path, spec.labels_path)
    # Classes count from the whole file, so `limit` never changes the model's output width.
    return RawSamples(x=x, y=y, classes=int(y.max()) + 1, max_value=None)


def _scaling_statistics(
    scale: Scaling, x_train: np.ndarray, max_value: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (shift, divisor) per feature, from the training split only."""
    features = x_train.shape[1]
    if scale is Scaling.NONE:
        return np.zeros(features), np.ones(features)

    if scale is Scaling.UNIT:
        if max_value is None:
            max_value = float(np.abs(x_train).max())
        return np.zeros(features), np.full(features, max_value if max_value > 0 else 1.0)

    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    # NOTE: the computed mean of a constant feature can differ from its value in
    # the last bit. Dividing that rounding noise by a tiny std would give +-1, so
    # the shift is the value itself, which maps the feature to exactly 0.
    constant = x_train.min(axis=0) == x_train.max(axis=0)
    mean[constant] = x_train[0, constant]
    std[constant | (std == 0)] = 1.0
    return mean, std


def _frozen(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=dtype)
    array.setflags(write=False)
    return array


def _float_dtype(dtype: str | np.dtype | type) -> np.dtype:
    # NOTE: np.dtype(None) is float64, so None must be rejected before the conversion.
    try:
        resolved = None if dtype is None else np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved not in _FLOAT_DTYPES:
        raise InvalidInputError(f"dataset dtype must be float32 or float64, got {dtype!r}")
    return resolved


def _check_split(dataset: Dataset, split: str, x: np.ndarray, y: np.ndarray) -> None:
    where = f"dataset {dataset.name}, {split} split"
    if x.dtype not in _FLOAT_DTYPES or x.ndim != 2 or not x.flags.c_contiguous:
        raise InvalidInputError(
            f"{where}: x must be a C-contiguous 2-D float32 or float64 array, "
            f"got {x.dtype} of shape {x.shape}"
        )
    if x.shape[1] != dataset.features:
        raise InvalidInputError(
            f"{where}: x has {x.shape[1]} features, expected {dataset.features}"
        )
    if y.dtype != np.int64 or y.shape != (x.shape[0],):
        raise InvalidInputError(
            f"{where}: y must be int64 of shape ({x.shape[0]},), got {y.dtype} of shape {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() >= dataset.classes):
        raise InvalidInputError(
            f"{where}: labels must lie in [0, {dataset.classes}), got {y.min()}..{y.max()}"
        )
