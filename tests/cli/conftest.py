"""Fixtures of the CLI tests: the runtime tests' broker and daemons."""

from __future__ import annotations

from tests.runtime.conftest import broker, daemons  # noqa: F401  (re-exported fixtures)
