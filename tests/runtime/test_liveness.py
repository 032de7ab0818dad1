"""Heartbeat bookkeeping: lost workers, and worker ids that two processes share."""

from __future__ import annotations

from mpnn_async.runtime.liveness import Liveness


def test_worker_lost_after_timeout() -> None:
    liveness = Liveness(timeout_s=5)
    liveness.record("w1", ["a"], now=100.0)

    assert not liveness.is_lost("w1", now=104.0)
    assert liveness.is_lost("w1", now=106.0)
    assert liveness.live_workers(now=104.0) == {"w1": ("a",)}
    assert liveness.live_workers(now=106.0) == {}


def test_restarted_process_is_not_duplicate() -> None:
    liveness = Liveness(timeout_s=5)
    liveness.record("w1", ["a"], instance="old", now=100.0)
    liveness.record("w1", ["a"], instance="new", now=101.0)
    liveness.record("w1", ["a"], instance="new", now=102.0)

    assert liveness.duplicates == set()


def test_two_live_processes_are_duplicates() -> None:
    liveness = Liveness(timeout_s=5)
    liveness.record("w1", ["a"], instance="one", now=100.0)
    liveness.record("w1", [], instance="two", now=100.2)
    liveness.record("w1", ["a"], instance="one", now=100.5)

    assert liveness.duplicates == {"w1"}


def test_pool_flag_follows_latest_beat() -> None:
    liveness = Liveness(timeout_s=5)
    liveness.record("w1", [], assignable=True, now=100.0)
    assert liveness.assignable == {"w1"}

    liveness.record("w1", ["a"], assignable=False, now=101.0)
    assert liveness.assignable == set()
