"""`mpnn plan` run as a real subprocess: tables, JSON, overrides and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from mpnn_async.cli.exit_codes import ExitCode
from mpnn_async.planning import Plan, load_plan

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"


def run_plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpnn_async", "plan", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def table_rows(stdout: str, first_cell: str) -> list[list[str]]:
    """Return the whitespace-split lines of the report that start with `first_cell`."""
    return [line.split() for line in stdout.splitlines() if line.split()[:1] == [first_cell]]


def test_tiny_table_hand_checked():
    result = run_plan("configs/tiny.toml")
    assert result.returncode == ExitCode.OK, result.stderr
    plan = load_plan(CONFIGS / "tiny.toml")
    out = result.stdout
    assert f"plan {plan.plan_id}: model 4-6-5-3 float64, 3 partitions (a, b, c)" in out

    # Neurons (parameters) per layer: layer, width, a, b, c.
    assert ["1", "6", "3", "(15)", "3", "(15)", "-"] in table_rows(out, "1")
    assert ["2", "5", "-", "2", "(14)", "3", "(21)"] in table_rows(out, "2")
    assert ["3", "3", "1", "(6)", "-", "2", "(12)"] in table_rows(out, "3")
    assert table_rows(out, "total") == [["total", "14", "4", "(21)", "5", "(29)", "5", "(33)"]]

    # Boundary: fwd msgs, fwd bytes/row, bwd msgs, bwd bytes/row (float64).
    assert "input -> 1  " in out
    assert ["input", "->", "1", "2", "64", "0", "0"] in table_rows(out, "input")
    assert ["1", "->", "2", "3", "72", "3", "72"] in table_rows(out, "1")
    assert ["2", "->", "3", "3", "56", "3", "56"] in table_rows(out, "2")
    assert ["3", "->", "loss", "2", "24", "2", "24"] in table_rows(out, "3")

    # Memory with adam: a has 21 parameters * 8 bytes * 4 arrays = 672 B.
    assert table_rows(out, "a")[0][:4] == ["a", "21", "672", "B"]


def test_digits_table_matches_plan():
    result = run_plan("configs/digits.toml")
    assert result.returncode == ExitCode.OK, result.stderr
    plan = load_plan(CONFIGS / "digits.toml")
    assert plan.plan_id in result.stdout
    first_layer = [row for row in table_rows(result.stdout, "1") if row[1] == "128"]
    assert first_layer == [["1", "128", "64", "(4160)", "38", "(2470)", "26", "(1690)"]]
    for boundary in plan.boundary_traffic():
        expected = [
            *boundary.label.split(),
            str(boundary.forward_messages),
            str(boundary.forward_bytes_per_row),
            str(boundary.backward_messages),
            str(boundary.backward_bytes_per_row),
        ]
        assert expected in table_rows(result.stdout, expected[0]), boundary.label


def test_json_output_is_canonical_plan():
    result = run_plan("configs/digits.toml", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    stdout = result.stdout.encode()
    plan = load_plan(CONFIGS / "digits.toml")
    assert stdout == plan.to_json() + b"\n"
    loaded = Plan.from_json(stdout)
    assert loaded.plan_id == plan.plan_id


def test_mnist_table_runs():
    result = run_plan(str(CONFIGS / "mnist.toml"), "--optimizer", "sgd", "--rows-in-flight", "8")
    assert result.returncode == ExitCode.OK, result.stderr
    assert "784-256-128-10" in result.stdout
    assert "total @ 8 rows" in result.stdout
    assert "(sgd: 0 arrays per parameter)" in result.stdout


def test_strategy_override_with_partition_count():
    result = run_plan("configs/digits.toml", "--strategy", "even", "--partitions", "4", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    plan = Plan.from_json(result.stdout.encode())
    assert plan.partitions == ("p1", "p2", "p3", "p4")
    assert [len(plan.neurons(name, 1)) for name in plan.partitions] == [32, 32, 32, 32]
    assert [len(plan.neurons(name, 3)) for name in plan.partitions] == [3, 3, 2, 2]


def test_strategy_override_uses_config_partitions():
    result = run_plan("configs/digits.toml", "--strategy", "layers", "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    plan = Plan.from_json(result.stdout.encode())
    assert plan.partitions == ("a", "b", "c")
    assert [plan.layers_of(name) for name in plan.partitions] == [(1,), (2,), (3,)]


def test_bad_strategy_exits_with_config_error():
    result = run_plan("configs/digits.toml", "--strategy", "percent:50,50")
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert "--strategy" in result.stderr
    assert "2 shares for 3 partitions" in result.stderr


def test_partitions_without_strategy_is_usage_error():
    result = run_plan("configs/digits.toml", "--partitions", "3")
    assert result.returncode == ExitCode.USAGE
    assert "--partitions needs --strategy" in result.stderr


def test_bad_config_names_field(tmp_path):
    text = (CONFIGS / "digits.toml").read_text(encoding="utf-8")
    bad = text.replace("counts = { a = 32, b = 32 }", "counts = { a = 32, b = 30 }")
    assert bad != text
    path = tmp_path / "bad.toml"
    path.write_text(bad, encoding="utf-8")
    result = run_plan(str(path))
    assert result.returncode == ExitCode.CONFIG_ERROR == 3
    assert "plan.layers[1].counts" in result.stderr
    assert "layer 2 has 64 neurons" in result.stderr
    assert result.stdout == ""


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[model]\ninput = 4\n[plan\npartitions = ["a"]\n', encoding="utf-8")
    result = run_plan(str(path))
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert str(path) in result.stderr
    assert "line 3" in result.stderr


def test_missing_config_file(tmp_path):
    result = run_plan(str(tmp_path / "nope.toml"))
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert "file not found" in result.stderr


def test_json_stdout_parses_with_orjson():
    result = run_plan("configs/tiny.toml", "--json")
    decoded = orjson.loads(result.stdout)
    assert decoded["ownership"]["1"] == {"a": [0, 2, 4], "b": [1, 3, 5]}
