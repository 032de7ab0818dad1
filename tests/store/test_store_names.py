"""Names from callers must not reach outside the store root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mpnn_async.errors import InvalidInputError
from mpnn_async.store import ModelStore, Store, validate_key, validate_name

BAD_NAMES = [
    "",
    ".",
    "..",
    "../escape",
    "a/../../escape",
    "/etc",
    "/",
    "a/b",
    "a\\b",
    "_LATEST",
    "_LOCK",
    ".tmp.x",
    "-flag",
    "a b",
    "a\x00b",
    "a\nb",
    "caf\u00e9",
    "x" * 129,
]

GOOD_NAMES = ["a", "0", "p-0", "layer_1.w", "A.b-c_d", "x" * 128, "sha256-" + "f" * 64]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_validate_name_rejects(name: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid partition name"):
        validate_name(name, field="partition name")


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_validate_name_accepts(name: str) -> None:
    assert validate_name(name, field="partition name") == name


@pytest.mark.parametrize("name", [None, 3, b"abc", ("a",)])
def test_validate_name_rejects_non_str(name: object) -> None:
    with pytest.raises(InvalidInputError, match="must be a str"):
        validate_name(name, field="model name")


def test_key_as_plain_string_rejected() -> None:
    with pytest.raises(InvalidInputError, match="not a string"):
        validate_key("models/mnist")


def test_key_empty_rejected() -> None:
    with pytest.raises(InvalidInputError, match="at least one name"):
        validate_key(())


def test_key_not_iterable_rejected() -> None:
    with pytest.raises(InvalidInputError, match="tuple of names"):
        validate_key(42)  # type: ignore[arg-type]


def test_key_list_becomes_tuple() -> None:
    assert validate_key(["models", "m"]) == ("models", "m")


@pytest.mark.parametrize("name", BAD_NAMES)
def test_store_rejects_bad_names_everywhere(store: Store, store_root: Path, name: str) -> None:
    arrays = {"w": np.zeros(2)}
    calls = [
        lambda: store.commit(("models", name), arrays, expected_version=None),
        lambda: store.update(("models", name), lambda version: (arrays, {})),
        lambda: store.read(("models", name)),
        lambda: store.latest_version((name,)),
        lambda: store.prune((name, "x"), keep=1),
        lambda: store.put_document(("plans",), name, {"a": 1}),
        lambda: store.get_document(("plans",), name),
        lambda: store.put_document((name,), "doc", {"a": 1}),
        lambda: store.list_children((name,)),
        lambda: store.commit(("ok",), {name: np.zeros(2)}, expected_version=None),
        lambda: ModelStore(store, name),
        lambda: ModelStore(store, "m").partition_key(name),
        lambda: ModelStore(store, "m").checkpoint_key(name),
        lambda: ModelStore(store, "m").save_plan({"a": 1}, plan_id=name),
    ]
    for index, call in enumerate(calls):
        with pytest.raises(InvalidInputError):
            call()
        assert [path.name for path in store_root.parent.iterdir()] == ["root"], f"call {index}"

    # Validation runs before any file operation, so nothing was created inside the root either.
    assert list(store_root.iterdir()) == []
