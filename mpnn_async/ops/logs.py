"""Log formatters for the `mpnn` command: plain text, or one JSON object per line.

The project's log messages start with an event name and carry `key=value`
pairs, as in `worker.started worker=%s partitions=%s`. The JSON formatter
writes the rendered message and also the event and each pair as fields of
their own. It takes each value from the logging call's arguments, so numbers
stay numbers and a value that contains spaces stays whole.

Both formatters replace the password of any `scheme://user:password@` URL in
their output with `***`, so a URL that reaches a log line by mistake is still
hidden. The formatters install nothing: only the CLI attaches them to handlers.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson

from mpnn_async.errors import ConfigError

__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "JsonFormatter",
    "TextFormatter",
    "parse_event_fields",
    "redact_credentials",
    "resolve_log_format",
]

LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "MPNN_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Keys of every JSON line; a logged pair with one of these keys is written as `<key>_`.
RESERVED_KEYS = frozenset({"time", "level", "logger", "message", "event", "exception", "stack"})

# One printf-style conversion, as `%` formatting (and so `logging`) accepts it.
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")
_PAIR = re.compile(r"([A-Za-z_][\w.-]*)=(.*)", re.DOTALL)
_EVENT = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+)+")
# The user-info part of a URL. The password runs to the last `@` before white
# space, so a password that contains `@` is hidden whole (a later `@` in the
# same word hides more than the password, never less).
_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)\S+@")
# Separators that may follow a value in a message template, as in `error=%s;`.
_TRAILING = ";,"
_MAX_JSON_INT = 2**63 - 1


def resolve_log_format(flag: str | None, environ: Mapping[str, str]) -> str:
    """Return the log format: the `--log-format` flag, else `MPNN_LOG_FORMAT`, else `text`."""
    if flag is not None:
        return flag
    value = environ.get(LOG_FORMAT_ENV, "").strip().lower()
    if not value:
        return "text"
    if value not in LOG_FORMATS:
        raise ConfigError(
            LOG_FORMAT_ENV, f"unknown value {value!r}", fix=f"use one of {', '.join(LOG_FORMATS)}"
        )
    return value


def redact_credentials(text: str) -> str:
    """Return `text` with the password of every `scheme://user:password@` URL replaced by `***`."""
    if "://" not in text:
        return text
    return _CREDENTIALS.sub(r"\g<head>***@", text)


class TextFormatter(logging.Formatter):
    """`time level logger message` lines, with URL passwords hidden."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact_credentials(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, event and the message's pairs."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_credentials(record.getMessage()),
        }
        event, fields = parse_event_fields(record)
        if event is not None:
            line["event"] = event
        for key, value in fields.items():
            line[f"{key}_" if key in RESERVED_KEYS else key] = (
                redact_credentials(value) if isinstance(value, str) else value
            )
        if record.exc_info:
            line["exception"] = redact_credentials(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = redact_credentials(self.formatStack(record.stack_info))
        return orjson.dumps(line, default=str).decode()


def parse_event_fields(record: logging.LogRecord) -> tuple[str | None, dict[str, Any]]:
    """Return the event name and the `key=value` pairs of a record's message.

    The message template is split at white space. The first word is the event
    when it reads like one (`worker.started`, dotted, with no `=`). A word
    `key=%s` takes its value from the matching argument. A word whose value
    mixes text and conversions, such as `attempt=%d/%d`, gets the rendered
    text. When the template and the arguments do not match one to one, the
    rendered message is split instead and every value is a string.
    """
    template = record.msg
    args = record.args
    if not isinstance(template, str) or isinstance(args, Mapping):
        return _parse_rendered(record.getMessage())
    arguments = tuple(args or ())
    words = template.split()
    if sum(_count_arguments(word) for word in words) != len(arguments):
        return _parse_rendered(record.getMessage())

    event: str | None = None
    fields: dict[str, Any] = {}
    position = 0
    for index, word in enumerate(words):
        needed = _count_arguments(word)
        word_arguments = arguments[position : position + needed]
        position += needed
        if index == 0 and "=" not in word:
            rendered = _render(word, word_arguments)
            if _EVENT.fullmatch(rendered):
                event = rendered
            continue
        pair = _PAIR.fullmatch(word)
        if pair is None:
            continue
        key, value_template = pair.groups()
        fields[key] = _value(value_template.rstrip(_TRAILING), word_arguments)
    return event, fields


def _parse_rendered(message: str) -> tuple[str | None, dict[str, Any]]:
    words = message.split()
    event = words[0] if words and "=" not in words[0] and _EVENT.fullmatch(words[0]) else None
    fields: dict[str, Any] = {}
    for word in words:
        pair = _PAIR.fullmatch(word)
        if pair is not None:
            fields[pair.group(1)] = pair.group(2).rstrip(_TRAILING)
    return event, fields


def _count_arguments(template: str) -> int:
    """Return how many arguments the conversions in `template` consume (`%%` none, `*` one more)."""
    count = 0
    for match in _CONVERSION.finditer(template):
        spec = match.group()
        if spec != "%%":
            count += 1 + spec.count("*")
    return count


def _render(template: str, arguments: tuple[Any, ...]) -> str:
    try:
        return template % arguments
    except (TypeError, ValueError, KeyError):
        return template


def _value(template: str, arguments: tuple[Any, ...]) -> Any:
    """Return one pair's value: the argument itself for a lone conversion, else the rendered text."""
    match = _CONVERSION.fullmatch(template)
    if match is None or len(arguments) != 1 or "*" in template or template == "%%":
        return _render(template, arguments) if arguments else template
    argument = arguments[0]
    conversion = template[-1]
    if conversion == "r":
        return repr(argument)
    if conversion == "a":
        return ascii(argument)
    if conversion in "diu" and isinstance(argument, (int, float)) and not isinstance(argument, bool):
        return _json_int(int(argument))
    if conversion in "eEfFgG" and isinstance(argument, (int, float)) and not isinstance(argument, bool):
        return float(argument)
    if conversion == "s":
        return _json_scalar(argument)
    return _render(template, arguments)


def _json_scalar(value: Any) -> Any:
    """Return `value` if JSON has the same type for it, else the text that `%s` shows."""
    kind = type(value)
    if value is None or kind is bool or kind is float or kind is str:
        return value
    if kind is int:
        return _json_int(value)
    return str(value)


def _json_int(value: int) -> int | str:
    # orjson rejects integers outside 64 bits; such a value is written as text.
    return value if -_MAX_JSON_INT - 1 <= value <= _MAX_JSON_INT else str(value)


def _utc_iso(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
