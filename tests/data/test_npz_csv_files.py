from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mpnn_async.data import load_csv, load_npz
from mpnn_async.errors import InvalidInputError


def samples(sample_count: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return rng.normal(size=(sample_count, 3)), rng.integers(0, 4, size=sample_count)


def write_text(path: Path, text: str, *, gzipped: bool = False) -> Path:
    content = text.encode()
    path.write_bytes(gzip.compress(content) if gzipped else content)
    return path


# --- npz ---


def test_npz_default_keys(tmp_path: Path) -> None:
    x, y = samples()
    np.savez(tmp_path / "d.npz", x=x, y=y)

    loaded_x, loaded_y = load_npz(tmp_path / "d.npz")

    assert np.array_equal(loaded_x, x)
    assert loaded_y.dtype == np.int64
    assert np.array_equal(loaded_y, y)


def test_npz_custom_keys_and_images_flattened(tmp_path: Path) -> None:
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez_compressed(tmp_path / "d.npz", images=images, targets=np.array([1.0, 0.0]))

    x, y = load_npz(tmp_path / "d.npz", x_key="images", y_key="targets")

    assert x.shape == (2, 16)
    assert x.dtype == np.uint8
    assert np.array_equal(y, [1, 0])


def test_npz_missing_key_lists_keys(tmp_path: Path) -> None:
    x, y = samples()
    np.savez(tmp_path / "d.npz", features=x, y=y)

    with pytest.raises(
        InvalidInputError, match=r"has no array 'x'; it contains \['features', 'y'\]"
    ):
        load_npz(tmp_path / "d.npz")


def test_npz_object_array_is_not_unpickled(tmp_path: Path) -> None:
    x = np.empty(2, dtype=object)
    x[0], x[1] = [1.0], {"a": 1}
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1]))

    with pytest.raises(InvalidInputError, match="cannot read array 'x'.*allow_pickle=False"):
        load_npz(tmp_path / "d.npz")


def test_npy_file_is_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((2, 2)))

    with pytest.raises(InvalidInputError, match=r"single \.npy array.*numpy\.savez"):
        load_npz(tmp_path / "d.npy")


@pytest.mark.parametrize("content", [b"", b"not an archive at all", b"PK\x03\x04broken"])
def test_garbage_npz_is_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(content)

    with pytest.raises(InvalidInputError) as caught:
        load_npz(path)

    assert str(path) in str(caught.value)


def test_truncated_npz_is_rejected(tmp_path: Path) -> None:
    x, y = samples(200)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(InvalidInputError, match=str(path)):
        load_npz(path)


@pytest.mark.parametrize(
    ("x", "y", "message_part"),
    [
        (np.zeros((3, 2)), np.array([0, 1]), "3 samples of features but 2 labels"),
        (np.zeros((2, 2)), np.array([0.5, 1.0]), "whole numbers, got 0.5 in sample 0"),
        (np.zeros((2, 2)), np.array([0, -1]), "got -1 in sample 1"),
        (np.zeros((2, 2)), np.array([[0, 1]]), "one-dimensional"),
        (np.zeros((2, 2)), np.array(["a", "b"]), "labels must be integers"),
        (np.zeros(2), np.array([0, 1]), "at least one feature dimension"),
        (np.zeros((2, 0)), np.array([0, 1]), "no features"),
        (np.array([[1.0, np.inf], [0.0, 0.0]]), np.array([0, 1]), "first in sample 0"),
        (np.array([["a"], ["b"]]), np.array([0, 1]), "integers or floats"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), "contains no samples"),
    ],
)
def test_npz_invalid_arrays_are_rejected(
    tmp_path: Path, x: np.ndarray, y: np.ndarray, message_part: str
) -> None:
    np.savez(tmp_path / "d.npz", x=x, y=y)

    with pytest.raises(InvalidInputError, match=message_part):
        load_npz(tmp_path / "d.npz")


# --- csv ---


@pytest.mark.parametrize("gzipped", [False, True])
def test_csv_label_last_by_default(tmp_path: Path, gzipped: bool) -> None:
    path = write_text(tmp_path / "d.csv", "0.5,1,2\n-1.25,3,0\n\n4,5,1\n", gzipped=gzipped)

    x, y = load_csv(path)

    assert x.dtype == np.float64
    assert x.flags.c_contiguous
    assert np.array_equal(x, [[0.5, 1], [-1.25, 3], [4, 5]])
    assert np.array_equal(y, [2, 0, 1])
    assert y.dtype == np.int64


def test_csv_label_first_column(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "7,0.1,0.2\n3,0.3,0.4\n")

    x, y = load_csv(path, label_column=0)

    assert np.array_equal(x, [[0.1, 0.2], [0.3, 0.4]])
    assert np.array_equal(y, [7, 3])


def test_csv_label_by_header_name(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", 'a;"digit";b\n1;9;2\n3;8;4\n')

    x, y = load_csv(path, label_column="digit", header=True, delimiter=";")

    assert np.array_equal(x, [[1, 2], [3, 4]])
    assert np.array_equal(y, [9, 8])


def test_csv_header_without_flag_suggests_it(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "a,b,label\n1,2,0\n")

    with pytest.raises(InvalidInputError, match="line 1: 'a' is not a number; if the first row"):
        load_csv(path)


@pytest.mark.parametrize(
    ("text", "options", "message_part"),
    [
        ("", {}, "contains no data rows"),
        ("\n\n", {}, "contains no data rows"),
        ("", {"header": True}, "is empty, expected a header row"),
        ("a,b\n", {"header": True}, "contains no data rows"),
        ("1,2,3\n4,5\n", {}, "line 2 has 2 columns, earlier lines have 3"),
        ("a,b\n1,2\n3,x\n", {"header": True}, "line 3: 'x' is not a number"),
        ("1,2\n", {"label_column": 2}, "label column 2 is out of range for 2 columns"),
        ("1,2\n", {"label_column": -3}, "out of range"),
        ("1\n2\n", {}, "need at least one feature and the label"),
        ("a,b\n1,2\n", {"header": True, "label_column": "c"}, "no column named 'c'"),
        ("1,2\n", {"label_column": "c"}, "is a name, but header is false"),
        ("a,b,c\n1,2\n", {"header": True}, "the header has 3 columns but the rows have 2"),
        ("1,2,0.5\n", {}, "whole numbers"),
        ("1,nan,0\n", {}, "NaN or infinity"),
    ],
)
def test_csv_invalid_file_is_rejected(
    tmp_path: Path, text: str, options: dict[str, object], message_part: str
) -> None:
    path = write_text(tmp_path / "d.csv", text)

    with pytest.raises(InvalidInputError) as caught:
        load_csv(path, **options)  # type: ignore[arg-type]

    assert str(path) in str(caught.value)
    assert message_part in str(caught.value)


def test_csv_binary_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"1,2\n\xff\xfe\x00")

    with pytest.raises(InvalidInputError, match="not UTF-8 text"):
        load_csv(path)


def test_csv_corrupt_gzip_is_rejected(tmp_path: Path) -> None:
    packed = gzip.compress(b"1,2,3\n" * 1000)
    path = tmp_path / "d.csv.gz"
    path.write_bytes(packed[:-12])

    with pytest.raises(InvalidInputError, match="corrupt gzip data"):
        load_csv(path)


def test_csv_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot open"):
        load_csv(tmp_path / "absent.csv")
