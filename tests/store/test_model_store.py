"""ModelStore names the keys of one model's plans, partitions and checkpoints."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mpnn_async.errors import InvalidInputError
from mpnn_async.store import ModelStore, NotFoundError, Store

PLAN = {"model": "mnist", "partitions": {"p0": [[1, 0], [1, 1]], "p1": [[2, 0]]}}


@pytest.fixture
def models(store: Store) -> ModelStore:
    return ModelStore(store, "mnist")


def test_keys_follow_layout(models: ModelStore) -> None:
    assert models.plans_key == ("models", "mnist", "plans")
    assert models.partition_key("p0") == ("models", "mnist", "partitions", "p0")
    assert models.checkpoint_key("step-100") == ("models", "mnist", "checkpoints", "step-100")


@pytest.mark.parametrize("form", ["dict", "bytes", "str"])
def test_save_and_load_plan(models: ModelStore, form: str) -> None:
    text = json.dumps(PLAN)
    forms: dict[str, dict[str, Any] | bytes | str] = {
        "dict": PLAN,
        "bytes": text.encode(),
        "str": text,
    }
    plan = forms[form]

    models.save_plan(plan, plan_id="abc123")

    assert models.load_plan("abc123") == PLAN
    assert models.list_plans() == ["abc123"]
    assert (models.store.root / "models" / "mnist" / "plans" / "_doc.abc123").is_file()


def test_save_plan_twice_is_idempotent(models: ModelStore) -> None:
    models.save_plan(PLAN, plan_id="abc123")
    models.save_plan(json.dumps(PLAN, indent=2), plan_id="abc123")
    assert models.list_plans() == ["abc123"]


def test_save_plan_different_content_rejected(models: ModelStore) -> None:
    models.save_plan(PLAN, plan_id="abc123")
    with pytest.raises(InvalidInputError, match="already exists with different content"):
        models.save_plan({**PLAN, "model": "other"}, plan_id="abc123")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (b"\xff", "not valid JSON"),
    ],
)
def test_save_plan_invalid_json(models: ModelStore, text: bytes | str, problem: str) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        models.save_plan(text, plan_id="abc123")
    assert models.list_plans() == []


def test_save_plan_nan_rejected(models: ModelStore) -> None:
    with pytest.raises(InvalidInputError, match="not JSON-serializable"):
        models.save_plan('{"scale": NaN}', plan_id="abc123")


def test_load_missing_plan(models: ModelStore) -> None:
    with pytest.raises(NotFoundError, match="'nope'"):
        models.load_plan("nope")


def test_list_partitions_only_committed(models: ModelStore) -> None:
    store = models.store
    store.commit(models.partition_key("p1"), {"W1": np.zeros((2, 3))}, expected_version=None)
    store.commit(models.partition_key("p0"), {"W1": np.zeros((2, 3))}, expected_version=None)
    # A directory without a version, as a writer that crashed before its first commit leaves.
    store.root.joinpath(*models.partition_key("p2")).mkdir()

    assert models.list_partitions() == ["p0", "p1"]
    assert models.list_checkpoints() == []


def test_list_checkpoints(models: ModelStore) -> None:
    models.store.commit(models.checkpoint_key("step-10"), {"W1": np.ones(2)}, expected_version=None)
    assert models.list_checkpoints() == ["step-10"]
    assert models.list_partitions() == []


def test_models_do_not_see_each_other(store: Store, models: ModelStore) -> None:
    other = ModelStore(store, "cifar")
    models.save_plan(PLAN, plan_id="abc123")
    store.commit(models.partition_key("p0"), {"W1": np.zeros(1)}, expected_version=None)

    assert other.list_plans() == []
    assert other.list_partitions() == []


def test_model_store_repr(models: ModelStore) -> None:
    assert repr(models) == f"<ModelStore model='mnist' root={str(models.store.root)!r}>"
