from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mpnn_async.data import load_idx, read_idx
from mpnn_async.errors import InvalidInputError

# Type codes of the IDX format, written out here so the tests do not reuse the reader's table.
TYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    code = TYPE_CODES[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, content: bytes, *, gzipped: bool = False) -> Path:
    path.write_bytes(gzip.compress(content) if gzipped else content)
    return path


def mnist_like(sample_count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(sample_count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=sample_count, dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("gzipped", [False, True])
def test_images_and_labels_round_trip(tmp_path: Path, gzipped: bool) -> None:
    images, labels = mnist_like(12)
    images_path = write(tmp_path / "images-idx3-ubyte", idx_bytes(images), gzipped=gzipped)
    labels_path = write(tmp_path / "labels-idx1-ubyte", idx_bytes(labels), gzipped=gzipped)

    x, y = load_idx(images_path, labels_path)

    assert x.shape == (12, 784)
    assert x.dtype == np.uint8
    assert np.array_equal(x, images.reshape(12, 784))
    assert y.dtype == np.int64
    assert np.array_equal(y, labels)


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "f4", "f8"])
def test_wide_types_are_big_endian(tmp_path: Path, dtype: str) -> None:
    values = (np.arange(24).reshape(2, 3, 4) * (-1) ** np.arange(24).reshape(2, 3, 4)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        values = values * 1.5 + 1e-3
    path = write(tmp_path / "values.idx", idx_bytes(values))

    loaded = read_idx(path)

    assert loaded.shape == (2, 3, 4)
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.dtype.isnative
    assert np.array_equal(loaded, values)


def test_gzip_detected_by_content(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.uint8)
    plain_named_gz = write(tmp_path / "plain.gz", idx_bytes(values))
    gzipped_unnamed = write(tmp_path / "packed", idx_bytes(values), gzipped=True)

    assert np.array_equal(read_idx(plain_named_gz), values)
    assert np.array_equal(read_idx(gzipped_unnamed), values)


VALID_HEADER = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 4)


@pytest.mark.parametrize(
    ("content", "message_part"),
    [
        (b"", "needs 4 bytes, but the file ends after 0"),
        (b"\x00\x00", "needs 4 bytes, but the file ends after 2"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 4) + bytes(4), "magic number 0x01000801"),
        (b"\x00\x00\x0a\x01" + struct.pack(">I", 4) + bytes(4), "unknown IDX type code 0x0A"),
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "3 dimension sizes needs 12 bytes"),
        (VALID_HEADER + bytes(3), "needs 4 bytes, but the file ends after 3"),
        (VALID_HEADER + bytes(5), "bytes after the 4 data bytes"),
        (
            bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 60000, 28, 28) + bytes(100),
            "shape (60000, 28, 28) (uint8) needs 47040000 bytes, but the file ends after 100",
        ),
        (
            bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + bytes(8),
            "shape (3,) (int32) needs 12 bytes",
        ),
    ],
)
@pytest.mark.parametrize("gzipped", [False, True])
def test_malformed_file_is_rejected(
    tmp_path: Path, content: bytes, message_part: str, gzipped: bool
) -> None:
    path = write(tmp_path / "bad.idx", content, gzipped=gzipped)

    with pytest.raises(InvalidInputError) as caught:
        read_idx(path)

    assert str(path) in str(caught.value)
    assert message_part in str(caught.value)


def test_huge_declared_shape_is_not_allocated(tmp_path: Path) -> None:
    # 2**32-1 cubed bytes could never be allocated; the reader must stop at the end of the file.
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1)
    path = write(tmp_path / "huge.idx", header + bytes(10))

    with pytest.raises(InvalidInputError, match="file ends after 10"):
        read_idx(path)


def test_corrupt_gzip_is_rejected(tmp_path: Path) -> None:
    packed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8)))
    path = write(tmp_path / "cut.idx.gz", packed[: len(packed) // 2])

    with pytest.raises(InvalidInputError, match="corrupt gzip data") as caught:
        read_idx(path)

    assert str(path) in str(caught.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent-idx3-ubyte"

    with pytest.raises(InvalidInputError, match="cannot open") as caught:
        read_idx(path)

    assert str(path) in str(caught.value)


def test_label_count_mismatch_names_both_files(tmp_path: Path) -> None:
    images, labels = mnist_like(5)
    images_path = write(tmp_path / "images", idx_bytes(images))
    labels_path = write(tmp_path / "labels", idx_bytes(labels[:4]))

    with pytest.raises(InvalidInputError) as caught:
        load_idx(images_path, labels_path)

    assert f"{images_path} has 5 images but {labels_path} has 4 labels" in str(caught.value)


def test_float_labels_are_rejected(tmp_path: Path) -> None:
    images, labels = mnist_like(3)
    images_path = write(tmp_path / "images", idx_bytes(images))
    labels_path = write(tmp_path / "labels", idx_bytes(labels.astype(np.float32)))

    with pytest.raises(InvalidInputError, match="integer IDX type, got float32") as caught:
        load_idx(images_path, labels_path)

    assert str(labels_path) in str(caught.value)


def test_negative_labels_are_rejected(tmp_path: Path) -> None:
    images, _ = mnist_like(3)
    images_path = write(tmp_path / "images", idx_bytes(images))
    labels_path = write(tmp_path / "labels", idx_bytes(np.array([1, -2, 3], dtype=np.int8)))

    with pytest.raises(InvalidInputError, match="got -2 in sample 1"):
        load_idx(images_path, labels_path)


def test_two_dimensional_labels_are_rejected(tmp_path: Path) -> None:
    images, labels = mnist_like(4)
    images_path = write(tmp_path / "images", idx_bytes(images))
    labels_path = write(tmp_path / "labels", idx_bytes(labels.reshape(2, 2)))

    with pytest.raises(InvalidInputError, match=r"one-dimensional, got shape \(2, 2\)"):
        load_idx(images_path, labels_path)


def test_one_dimensional_images_are_rejected(tmp_path: Path) -> None:
    images_path = write(tmp_path / "images", idx_bytes(np.arange(4, dtype=np.uint8)))
    labels_path = write(tmp_path / "labels", idx_bytes(np.arange(4, dtype=np.uint8)))

    with pytest.raises(InvalidInputError, match="at least one feature dimension") as caught:
        load_idx(images_path, labels_path)

    assert str(images_path) in str(caught.value)


def test_nan_pixels_are_rejected(tmp_path: Path) -> None:
    images = np.zeros((3, 2, 2), dtype=np.float32)
    images[2, 1, 0] = np.nan
    images_path = write(tmp_path / "images", idx_bytes(images))
    labels_path = write(tmp_path / "labels", idx_bytes(np.zeros(3, dtype=np.uint8)))

    with pytest.raises(InvalidInputError, match="NaN or infinity, first in sample 2"):
        load_idx(images_path, labels_path)


def test_empty_idx_pair_is_rejected(tmp_path: Path) -> None:
    images_path = write(tmp_path / "images", idx_bytes(np.zeros((0, 2, 2), dtype=np.uint8)))
    labels_path = write(tmp_path / "labels", idx_bytes(np.zeros(0, dtype=np.uint8)))

    with pytest.raises(InvalidInputError, match="contains no images"):
        load_idx(images_path, labels_path)
