"""Reading TOML config files, and the errors for missing or malformed ones."""

from __future__ import annotations

import pytest

from mpnn_async.config import load_toml, require_table
from mpnn_async.errors import ConfigError


def test_loads_tables(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[model]\ninput = 4\n\n[job]\nname = "x"\n', encoding="utf-8")
    assert load_toml(path) == {"model": {"input": 4}, "job": {"name": "x"}}
    assert load_toml(str(path)) == load_toml(path)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    assert caught.value.field == str(path)
    assert "file not found" in str(caught.value)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_toml(tmp_path)
    assert "is a directory" in str(caught.value)


def test_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\ninput = 4\nlayers = [1, 2\nloss = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    assert caught.value.field == str(path)
    assert "line 4, column" in str(caught.value)
    assert "invalid TOML" in str(caught.value)


def test_duplicate_table_names_line(tmp_path):
    path = tmp_path / "twice.toml"
    path.write_text("[plan]\na = 1\n\n[plan]\nb = 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    assert "line 4" in str(caught.value)


def test_error_at_end_of_file_names_last_line(tmp_path):
    path = tmp_path / "cut.toml"
    path.write_text("[model]\ninput = 4\nseed = ", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    assert "line 3 (end of file)" in str(caught.value)


def test_non_utf8_names_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[model]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    assert "line 2: not valid UTF-8" in str(caught.value)


def test_require_table_present():
    assert require_table({"plan": {"a": 1}}, "plan") == {"a": 1}


def test_require_table_missing():
    with pytest.raises(ConfigError) as caught:
        require_table({"model": {}}, "plan")
    assert caught.value.field == "plan"
    assert "add a [plan] table" in str(caught.value)


def test_require_table_not_a_table():
    with pytest.raises(ConfigError) as caught:
        require_table({"plan": 3}, "plan")
    assert caught.value.field == "plan"
    assert "must be a table, got int" in str(caught.value)
