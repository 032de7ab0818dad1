"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mpnn_async.config import load_toml
from mpnn_async.settings import RuntimeSettings

__all__ = ["settings_from_args", "split_runtime_table"]


def split_runtime_table(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (document without [runtime], the [runtime] table)."""
    document = dict(document)
    runtime = document.pop("runtime", {}) or {}
    return document, runtime


def settings_from_args(args: argparse.Namespace, config: str | Path | None = None) -> RuntimeSettings:
    file_table: dict[str, Any] = {}
    if config is not None:
        _, file_table = split_runtime_table(load_toml(config))
    return RuntimeSettings.resolve(flags=vars(args), file_table=file_table)
