"""`assign_partitions`: which idle pool workers get which partitions."""

from __future__ import annotations

from mpnn_async.runtime.pool import assign_partitions


def test_uncovered_partitions_first() -> None:
    hosts = {"fixed-a": ("a",), "pool-1": (), "pool-2": ()}

    changes = assign_partitions(["a", "b", "c"], hosts, ["pool-1", "pool-2"])

    assert changes == {"pool-1": ["b"], "pool-2": ["c"]}


def test_extra_workers_become_replicas() -> None:
    hosts = {"pool-1": ("a",), "pool-2": ("b",), "pool-3": (), "pool-4": ()}

    changes = assign_partitions(["a", "b"], hosts, ["pool-1", "pool-2", "pool-3", "pool-4"])

    assert changes == {"pool-3": ["a"], "pool-4": ["b"]}


def test_too_few_workers_share_partitions() -> None:
    hosts = {"pool-1": (), "pool-2": ("a",)}

    changes = assign_partitions(["a", "b", "c"], hosts, ["pool-1", "pool-2"])

    assert changes["pool-1"] == ["b"]
    assert changes["pool-2"] == ["a", "c"]


def test_busy_and_fixed_workers_untouched() -> None:
    hosts = {"fixed": (), "other-job": ("x",)}

    assert assign_partitions(["a"], hosts, ["other-job"]) == {}


def test_reclaimed_partitions_free_worker() -> None:
    hosts = {"pool-1": ("old",)}

    changes = assign_partitions(["new"], hosts, ["pool-1"], reclaim=["old"])

    assert changes == {"pool-1": ["new"]}
