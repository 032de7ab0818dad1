"""Datasets, loaders and the deterministic batch order shared by every trainer."""

from mpnn_async.data.dataset import Dataset, load_dataset
from mpnn_async.data.files import load_csv, load_npz
from mpnn_async.data.idx import load_idx, read_idx
from mpnn_async.data.spec import BUNDLED_DATASETS, DatasetSpec, FileFormat, Scaling
from mpnn_async.data.split import stratified_split

__all__ = [
    "BUNDLED_DATASETS",
    "Dataset",
    "DatasetSpec",
    "FileFormat",
    "Scaling",
    "load_csv",
    "load_dataset",
    "load_idx",
    "load_npz",
    "read_idx",
    "stratified_split",
]
