"""Loaders for the user's own sample files: NumPy .npz archives and CSV text."""

from __future__ import annotations

import contextlib
import gzip
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mpnn_async.data.samples import check_samples
from mpnn_async.errors import InvalidInputError

__all__ = ["load_csv", "load_npz", "open_data_file"]

GZIP_MAGIC = b"\x1f\x8b"


@contextlib.contextmanager
def open_data_file(path: Path) -> Iterator[BinaryIO]:
    """Open `path` for reading bytes, decompressing it if it starts with the gzip magic number.

    The file's content decides, not its name, so `x.gz` that is plain and `x`
    that is gzipped both read correctly. OS errors on open and gzip errors while
    reading become InvalidInputError naming the file.
    """
    with _open_binary(path) as raw:
        is_gzip = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        raw.seek(0)
        if not is_gzip:
            yield raw
            return
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream  # type: ignore[misc]
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InvalidInputError(f"{path}: corrupt gzip data: {exc}") from exc


def _open_binary(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot open: {exc.strerror or exc}") from exc


def load_npz(
    path: str | os.PathLike[str], *, x_key: str = "x", y_key: str = "y"
) -> tuple[np.ndarray, np.ndarray]:
    """Read features and labels from a NumPy .npz archive (as written by `numpy.savez`).

    Returns (x, y). x has shape (samples, features) and the stored dtype, with
    trailing dimensions flattened, so (n, 28, 28) images give (n, 784). y is
    int64 labels. Pickled (object) arrays are rejected, never unpickled.
    """
    path = Path(path)
    with _open_binary(path) as raw:
        try:
            loaded = np.load(raw, allow_pickle=False)
        except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
            raise InvalidInputError(f"{path}: not a NumPy .npz archive ({exc})") from exc
        if isinstance(loaded, np.ndarray):
            raise InvalidInputError(
                f"{path}: is a single .npy array, not an .npz archive. Save features and "
                f"labels with numpy.savez(path, {x_key}=features, {y_key}=labels)"
            )
        with loaded:
            x = _npz_member(loaded, x_key, path)
            y = _npz_member(loaded, y_key, path)
    return check_samples(x, y, source=str(path))


def _npz_member(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in archive.files:
        raise InvalidInputError(
            f"{path}: has no array {key!r}; it contains {sorted(archive.files)} "
            "(set dataset.x_key and dataset.y_key to the names used)"
        )
    try:
        return archive[key]
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidInputError(f"{path}: cannot read array {key!r}: {exc}") from exc


def load_csv(
    path: str | os.PathLike[str],
    *,
    label_column: int | str = -1,
    header: bool = False,
    delimiter: str = ",",
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV file of numbers, one sample per line, gzipped or not.

    `label_column` is the index of the label column (negative counts from the
    end, so the default -1 is the last column) or, with `header`, its name.
    Every other column is a feature. Blank lines are skipped; there are no
    comment lines and no quoted fields. Returns (x float64, y int64).
    """
    path = Path(path)
    with open_data_file(path) as stream:
        content = stream.read()
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: is not UTF-8 text (invalid byte at {exc.start})") from exc

    lines = text.splitlines()
    names: list[str] | None = None
    first_data_line = 1
    if header:
        if not lines:
            raise InvalidInputError(f"{path}: is empty, expected a header row")
        names = [name.strip().strip('"') for name in lines[0].split(delimiter)]
        lines = lines[1:]
        first_data_line = 2
    if not any(line.strip() for line in lines):
        raise InvalidInputError(f"{path}: contains no data rows")

    try:
        table = np.loadtxt(lines, delimiter=delimiter, dtype=np.float64, ndmin=2, comments=None)
    except ValueError as exc:
        problem = _find_bad_line(lines, first_data_line, delimiter) or str(exc)
        hint = "" if header else "; if the first row is a header, set header = true"
        raise InvalidInputError(f"{path}: invalid CSV: {problem}{hint}") from exc

    column = _label_column_index(label_column, names, table.shape[1], path)
    x = np.ascontiguousarray(np.delete(table, column, axis=1))
    return check_samples(x, table[:, column], source=str(path))


def _label_column_index(
    label_column: int | str, names: list[str] | None, column_count: int, path: Path
) -> int:
    if names is not None and len(names) != column_count:
        raise InvalidInputError(
            f"{path}: the header has {len(names)} columns but the rows have {column_count}"
        )
    if column_count < 2:
        raise InvalidInputError(
            f"{path}: has {column_count} column; need at least one feature and the label"
        )
    if isinstance(label_column, str):
        if names is None:
            raise InvalidInputError(
                f"{path}: label column {label_column!r} is a name, but header is false"
            )
        if label_column not in names:
            raise InvalidInputError(
                f"{path}: no column named {label_column!r} in the header {names}"
            )
        return names.index(label_column)
    if not -column_count <= label_column < column_count:
        raise InvalidInputError(
            f"{path}: label column {label_column} is out of range for {column_count} columns"
        )
    return label_column % column_count


def _find_bad_line(lines: list[str], first_line_number: int, delimiter: str) -> str | None:
    """Describe the first line that is not a row of numbers like the first row, if any."""
    expected_cells: int | None = None
    for number, line in enumerate(lines, start=first_line_number):
        if not line.strip():
            continue
        cells = line.split(delimiter)
        if expected_cells is None:
            expected_cells = len(cells)
        elif len(cells) != expected_cells:
            return f"line {number} has {len(cells)} columns, earlier lines have {expected_cells}"
        for cell in cells:
            try:
                float(cell)
            except ValueError:
                return f"line {number}: {cell.strip()!r} is not a number"
    return None
