from __future__ import annotations

from pathlib import Path

import pytest

from mpnn_async.store import Store


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    """A store root one level below tmp_path, so tests can check that nothing lands beside it."""
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.fixture
def store(store_root: Path) -> Store:
    return Store(store_root, lock_timeout_s=5.0)
