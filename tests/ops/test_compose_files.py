"""The compose files use only commands, flags and environment variables that the code has.

Docker does not run in the test environment, so these checks read the files as
text: every `MPNN_*` name must be one the code reads (or one of the
interpolation variables that compose/README.md documents), and every `mpnn`
command line must parse.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from mpnn_async.cli.main import build_parser
from mpnn_async.settings import RuntimeSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
COMPOSE_FILES = sorted(COMPOSE.glob("docker-compose*.yml"))
# Read by `docker compose` for interpolation only; compose/README.md documents them.
INTERPOLATION_ONLY = {"MPNN_BROKER_PASSWORD", "MPNN_NFS_SERVER", "MPNN_NFS_EXPORT"}
# `key: [...]` lines whose flow sequence is also valid JSON.
_LIST_LINE = re.compile(r"^\s*(command|entrypoint|test): (\[.*\])\s*$", re.MULTILINE)


def variables_read_by_code() -> set[str]:
    names = {f"MPNN_{field.name.upper()}" for field in dataclasses.fields(RuntimeSettings)}
    for path in (ROOT / "mpnn_async").rglob("*.py"):
        names.update(re.findall(r"\bMPNN_[A-Z_]+\b", path.read_text()))
    return names


def test_compose_files_exist():
    assert [path.name for path in COMPOSE_FILES] == ["docker-compose.nfs.yml", "docker-compose.yml"]
    assert (COMPOSE / "Dockerfile").is_file()
    assert (COMPOSE / "rabbitmq" / "enabled_plugins").read_text().strip() == (
        "[rabbitmq_management,rabbitmq_prometheus]."
    )


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_environment_variables_exist(path):
    used = set(re.findall(r"\bMPNN_[A-Z_]+\b", path.read_text()))
    unknown = used - variables_read_by_code() - INTERPOLATION_ONLY

    assert used
    assert not unknown, f"{path.name} uses variables the code never reads: {sorted(unknown)}"


def test_interpolation_variables_documented():
    readme = (COMPOSE / "README.md").read_text()

    for name in INTERPOLATION_ONLY:
        assert name in readme, name


def test_nfs_mount_options():
    text = (COMPOSE / "docker-compose.nfs.yml").read_text()
    options = re.search(r'o: "([^"]+)"', text).group(1).split(",")

    assert "nfsvers=4.2" in options
    assert "hard" in options
    assert "rw" in options
    assert not any(option.startswith("nolock") or option == "soft" for option in options)


def compose_lists() -> dict[str, list[list[str]]]:
    text = (COMPOSE / "docker-compose.yml").read_text()
    found: dict[str, list[list[str]]] = {}
    for key, value in _LIST_LINE.findall(text):
        found.setdefault(key, []).append(json.loads(value))
    return found


def test_daemon_commands_parse():
    lists = compose_lists()
    parser = build_parser()

    assert ["scheduler", "-v"] in lists["command"]
    assert parser.parse_args(["scheduler", "-v"]).command == "scheduler"
    # The worker service: a pool worker, so no partition is named.
    assert ["worker", "-v"] in lists["command"]
    assert parser.parse_args(["worker", "-v"]).partitions == []


def test_health_checks_parse():
    parser = build_parser()
    checks = [test for test in compose_lists()["test"] if "mpnn" in " ".join(test)]

    assert len(checks) == 2
    for test in checks:
        assert test[0] == "CMD"
        argv = test[1:]
        assert argv[0] == "mpnn"
        args = parser.parse_args(argv[1:])
        assert args.check is True
