"""Importing into the store: new models, --overwrite, re-cuts, and consistent reads for export."""

from __future__ import annotations

import numpy as np
import pytest

from mpnn_async.errors import ConfigError, ConflictError, InvalidInputError, StoreError
from mpnn_async.interchange import import_parameters, read_stored_model
from mpnn_async.interchange import stored as stored_module
from mpnn_async.model.spec import NetworkSpec
from mpnn_async.planning import build_plan
from mpnn_async.runtime.weights import (
    load_parameters,
    load_partition_job,
    prepare_partitions,
    save_partition_job,
)
from mpnn_async.store import ModelStore, NotFoundError, Store
from tests.interchange.helpers import (
    assert_bit_equal,
    make_plan,
    model_table,
    random_parameters,
)
from tests.runtime.jobs import PLANS


@pytest.fixture
def model_store(tmp_path):
    return ModelStore(Store.open(tmp_path / "store", create=True), "net")


def advance_partition(model_store, plan, partition, *, optimizer_state=True):
    """Commit one partition at the next step, with Adam-like state, as a training step would."""
    job = load_partition_job(
        model_store,
        job="training",
        plan_id=plan.plan_id,
        partition=partition,
        optimizer={},
        expected_step=model_store.store.read(model_store.partition_key(partition)).meta["step"],
    )
    for layer, (weights, biases) in job.parameters.items():
        weights += 1.0
        if optimizer_state:
            job.optimizer_state[f"W{layer}"] = {"exp_avg": np.ones_like(weights)}
    job.step += 1
    save_partition_job(model_store, job)


def test_new_model_committed_at_step_zero(model_store):
    plan = make_plan()
    parameters = random_parameters(plan.spec)

    versions, replaced = import_parameters(model_store, plan, parameters)

    assert replaced is False
    assert versions == {name: 1 for name in plan.partitions}
    for name in plan.partitions:
        meta = model_store.store.read(model_store.partition_key(name)).meta
        assert meta["plan_id"] == plan.plan_id
        assert meta["step"] == 0
    stored = read_stored_model(model_store)
    assert stored.step == 0
    assert_bit_equal(stored.parameters, parameters)


def test_existing_model_needs_overwrite(model_store):
    plan = make_plan()
    import_parameters(model_store, plan, random_parameters(plan.spec, seed=1))

    with pytest.raises(InvalidInputError, match="model 'net' already exists.*--overwrite"):
        import_parameters(model_store, plan, random_parameters(plan.spec, seed=2))

    assert all(model_store.store.latest_version(model_store.partition_key(name)) == 1 for name in plan.partitions)


def test_overwrite_commits_new_versions_and_resets_state(model_store):
    plan = make_plan()
    first = random_parameters(plan.spec, seed=1)
    import_parameters(model_store, plan, first)
    for name in plan.partitions:
        advance_partition(model_store, plan, name)
    second = random_parameters(plan.spec, seed=2)

    versions, replaced = import_parameters(model_store, plan, second, overwrite=True)

    assert replaced is True
    assert versions == {name: 3 for name in plan.partitions}
    for name in plan.partitions:
        key = model_store.partition_key(name)
        latest = model_store.store.read(key)
        assert latest.meta["step"] == 0
        assert latest.meta["job"] == "import"
        assert not [array for array in latest.arrays if "." in array], "optimizer state left behind"
        assert model_store.store.read(key, version=2).meta["step"] == 1
    assert_bit_equal(load_parameters(model_store, plan), second)


def test_overwrite_under_another_plan_recuts(model_store):
    three = make_plan(plan="count")  # partitions a, b, c
    two = make_plan(plan="ids")  # partitions a, b
    import_parameters(model_store, three, random_parameters(three.spec, seed=1))
    replacement = random_parameters(two.spec, seed=2)

    import_parameters(model_store, two, replacement, overwrite=True)

    stale = model_store.store.read(model_store.partition_key("c"))
    assert stale.meta["plan_id"] == three.plan_id
    stored = read_stored_model(model_store)
    assert stored.plan.plan_id == two.plan_id
    assert stored.versions == {"a": 3, "b": 3}
    assert_bit_equal(stored.parameters, replacement)


def test_overwrite_with_other_architecture_rejected(model_store):
    plan = make_plan()
    import_parameters(model_store, plan, random_parameters(plan.spec))
    table = model_table("float64")
    table["layers"] = [*table["layers"][:2], {"width": 3, "activation": "identity"}]
    other = build_plan(NetworkSpec.from_dict(table), PLANS["whole"])

    with pytest.raises(ConfigError, match=r"^model: differs from the stored model 'net' in layers") as caught:
        import_parameters(model_store, other, random_parameters(other.spec), overwrite=True)

    assert "another model name" in str(caught.value)


def test_wrong_parameter_shape_rejected_before_writing(model_store):
    plan = make_plan()
    parameters = random_parameters(plan.spec)
    parameters[1] = (parameters[1][0][:, :-1], parameters[1][1])

    with pytest.raises(InvalidInputError, match=r"^layer 2: weight has shape \(5, 6\)"):
        import_parameters(model_store, plan, parameters)

    assert model_store.list_partitions() == []


def test_partitions_at_different_steps(model_store):
    plan = make_plan()
    import_parameters(model_store, plan, random_parameters(plan.spec, seed=1))
    advance_partition(model_store, plan, "a", optimizer_state=False)

    with pytest.raises(StoreError, match=r"different steps \{'a': 1, 'b': 0, 'c': 0\}.*--overwrite"):
        read_stored_model(model_store)

    # An import over them brings every partition back to one step.
    replacement = random_parameters(plan.spec, seed=2)
    import_parameters(model_store, plan, replacement, overwrite=True)
    assert_bit_equal(read_stored_model(model_store).parameters, replacement)


def test_read_retries_after_concurrent_commit(model_store, monkeypatch):
    plan = make_plan()
    prepare_partitions(model_store, plan)
    real_load = stored_module.load_parameters
    calls = []

    def load_during_commit(store, read_plan):
        # A job persists a step between the version read and the assembly, once.
        if not calls:
            for name in read_plan.partitions:
                advance_partition(model_store, read_plan, name, optimizer_state=False)
        calls.append(1)
        return real_load(store, read_plan)

    monkeypatch.setattr(stored_module, "load_parameters", load_during_commit)

    stored = read_stored_model(model_store)

    assert len(calls) == 2
    assert stored.step == 1
    assert stored.versions == {name: 2 for name in plan.partitions}
    assert_bit_equal(stored.parameters, real_load(model_store, plan))


def test_read_gives_up_while_job_keeps_committing(model_store, monkeypatch):
    plan = make_plan()
    prepare_partitions(model_store, plan)
    real_load = stored_module.load_parameters
    monkeypatch.setattr(stored_module, "_RETRY_DELAY_S", 0.001)

    def load_during_step(store, read_plan):
        for name in read_plan.partitions:
            advance_partition(model_store, read_plan, name, optimizer_state=False)
        return real_load(store, read_plan)

    monkeypatch.setattr(stored_module, "load_parameters", load_during_step)

    with pytest.raises(ConflictError, match="changed on each of 5 reads"):
        read_stored_model(model_store)


def test_read_of_unknown_model(model_store):
    with pytest.raises(NotFoundError, match="model 'net' not found in store"):
        read_stored_model(model_store)
