"""Loading of the TOML config files that every subcommand reads.

One config file contains several top-level tables: `[model]` and `[plan]` (read by
`mpnn_async.planning`), and job tables such as `[job]`, `[optimizer]` and
`[dataset]`. Each reader validates only the tables it owns and ignores the
others, so a new table never breaks an older reader.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any, Mapping

from mpnn_async.errors import ConfigError

__all__ = ["load_toml", "require_table"]

# tomllib (Python 3.11) reports the position only inside the message text.
_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_END_OF_DOCUMENT = re.compile(r"\s*\(at end of document\)\s*$")


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and parse a TOML file.

    Raises `ConfigError` whose field is the file path when the file is missing,
    unreadable, not UTF-8, or not valid TOML; a syntax error names the line
    and column.
    """
    path_text = os.fspath(path)
    try:
        with open(path_text, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise ConfigError(path_text, "file not found", fix="check the path") from None
    except IsADirectoryError:
        raise ConfigError(
            path_text, "is a directory", fix="give the path of a .toml file"
        ) from None
    except OSError as error:
        raise ConfigError(path_text, f"cannot be read: {error.strerror}") from error

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            path_text, f"line {line}: not valid UTF-8", fix="save the file as UTF-8"
        ) from None

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path_text, _describe_syntax_error(error, text), fix=_TOML_FIX) from None


_TOML_FIX = "correct the TOML syntax at that line"


def _describe_syntax_error(error: tomllib.TOMLDecodeError, text: str) -> str:
    message = str(error)
    position = _POSITION.search(message)
    if position is not None:
        reason = message[: position.start()]
        return f"line {position.group(1)}, column {position.group(2)}: invalid TOML: {reason}"
    end = _END_OF_DOCUMENT.search(message)
    if end is not None:
        last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
        reason = message[: end.start()]
        return f"line {max(last_line, 1)} (end of file): invalid TOML: {reason}"
    return f"invalid TOML: {message}"


def require_table(
    config: Mapping[str, Any], name: str, *, fix: str | None = None
) -> Mapping[str, Any]:
    """Return the top-level table `name` of a parsed config, or raise `ConfigError` naming it."""
    if name not in config:
        raise ConfigError(name, "missing", fix=fix or f"add a [{name}] table")
    table = config[name]
    if not isinstance(table, Mapping):
        raise ConfigError(
            name, f"must be a table, got {type(table).__name__}", fix=f"write it as [{name}]"
        )
    return table
