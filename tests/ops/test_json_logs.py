"""`--log-format json`: one JSON object per line with the event and the message's key=value pairs."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from mpnn_async.errors import ConfigError
from mpnn_async.ops.logs import (
    JsonFormatter,
    TextFormatter,
    parse_event_fields,
    redact_credentials,
    resolve_log_format,
)
from tests.ops.conftest import run_mpnn
from tests.runtime.processes import wait_until


def record(message: str, *args: object, level: int = logging.INFO, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("mpnn_async.test", level, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]


def json_line(message: str, *args: object) -> dict[str, object]:
    return json.loads(JsonFormatter().format(record(message, *args)))


def test_json_line_has_record_fields():
    line = json_line("worker.started worker=%s partitions=%s prefetch=%d", "w1", "a,b", 256)

    assert line["level"] == "INFO"
    assert line["logger"] == "mpnn_async.test"
    assert line["message"] == "worker.started worker=w1 partitions=a,b prefetch=256"
    assert str(line["time"]).endswith("Z")
    assert line["event"] == "worker.started"
    assert line["worker"] == "w1"
    assert line["partitions"] == "a,b"
    assert line["prefetch"] == 256


def test_values_keep_type_and_spaces():
    line = json_line(
        "message.rejected reason=%s detail=%s ratio=%.2f error=%r",
        "unknown_job",
        "job 'ghost' was not started here",
        0.125,
        ValueError("bad"),
    )

    assert line["detail"] == "job 'ghost' was not started here"
    assert line["ratio"] == 0.125
    assert line["error"] == "ValueError('bad')"


def test_mixed_value_is_rendered_text():
    line = json_line("transport.connect_failed attempt=%d/%d error=%s; retrying", 2, 5, "refused")

    assert line["attempt"] == "2/5"
    assert line["error"] == "refused"


def test_event_from_argument():
    assert json_line("%s.exit_now signal=%s", "worker", "SIGTERM")["event"] == "worker.exit_now"


def test_third_party_message_has_no_event():
    event, fields = parse_event_fields(record("Connection attempt failed: %s", "refused"))

    assert event is None
    assert fields == {}


def test_mapping_arguments_fall_back_to_text():
    # Named conversions take a mapping, so the rendered message is split instead.
    event, fields = parse_event_fields(record("job.done job=%(job)s steps=%(steps)d", {"job": "j1", "steps": 6}))

    assert event == "job.done"
    assert fields == {"job": "j1", "steps": "6"}


def test_reserved_key_gets_underscore():
    line = json_line("job.failed message=%s level=%d", "boom", 3)

    assert line["message"] == "job.failed message=boom level=3"
    assert line["message_"] == "boom"
    assert line["level_"] == 3


def test_exception_is_included():
    try:
        raise RuntimeError("lost amqp://guest:hunter2@broker:5672/")
    except RuntimeError:
        exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record("handler.failed queue=%s", "q", exc_info=exc_info)))

    assert "RuntimeError" in str(line["exception"])
    assert "hunter2" not in str(line["exception"])


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_password_in_url_is_redacted(formatter):
    output = formatter.format(record("broker.url url=%s", "amqps://user:hunter2@rabbit:5671/prod?cafile=/etc/ca.pem"))

    assert "hunter2" not in output
    assert "amqps://user:***@rabbit:5671/prod?cafile=/etc/ca.pem" in output


def test_redact_credentials_cases():
    assert redact_credentials("amqp://guest:guest@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"
    assert redact_credentials("amqp://guest@127.0.0.1:5672/") == "amqp://guest@127.0.0.1:5672/"
    assert redact_credentials("amqp://u:p@ss@host/ and more") == "amqp://u:***@host/ and more"
    assert redact_credentials("no url here") == "no url here"


def test_resolve_log_format_precedence():
    assert resolve_log_format("text", {"MPNN_LOG_FORMAT": "json"}) == "text"
    assert resolve_log_format(None, {"MPNN_LOG_FORMAT": "JSON"}) == "json"
    assert resolve_log_format(None, {}) == "text"
    with pytest.raises(ConfigError, match="MPNN_LOG_FORMAT"):
        resolve_log_format(None, {"MPNN_LOG_FORMAT": "xml"})


def parse_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("arguments", "env"),
    [
        (("--log-format", "json", "-v", "plan", "configs/digits.toml"), {}),
        (("plan", "configs/digits.toml", "-v", "--log-format", "json"), {}),
        (("-v", "plan", "configs/digits.toml"), {"MPNN_LOG_FORMAT": "json"}),
    ],
    ids=["before-subcommand", "after-subcommand", "environment"],
)
def test_cli_writes_json_lines(arguments, env):
    completed = run_mpnn(*arguments, env=env)

    assert completed.returncode == 0, completed.stderr
    lines = parse_lines(completed.stderr)
    ready = [line for line in lines if line.get("event") == "plan.ready"]
    assert len(ready) == 1, completed.stderr
    assert ready[0]["config"] == "configs/digits.toml"
    assert ready[0]["id"]


def test_cli_rejects_unknown_env_format():
    completed = run_mpnn("plan", "configs/digits.toml", env={"MPNN_LOG_FORMAT": "yaml"})

    assert completed.returncode == 3
    assert "MPNN_LOG_FORMAT" in completed.stderr


def test_check_never_logs_password(tmp_path):
    # Port 1 refuses the connection; aiormq and the transport both log the failure.
    completed = run_mpnn(
        "worker", "--partition", "a", "--check", "-vv", "--log-format", "json",
        env={"MPNN_BROKER_URL": "amqp://guest:s3cret-pw@127.0.0.1:1/", "MPNN_STORE": str(tmp_path)},
    )

    assert completed.returncode == 4, completed.stdout + completed.stderr
    assert "s3cret-pw" not in completed.stdout
    assert "s3cret-pw" not in completed.stderr
    assert parse_lines(completed.stderr), "expected log lines at -vv"


@pytest.mark.rabbitmq
async def test_worker_daemon_json_lines(daemons):
    daemons.worker("a", "--log-format", "json")
    wait_until(lambda: "worker.started" in daemons.log("worker-a"), timeout_s=30, what="the worker to start",
               details=lambda: daemons.log("worker-a"))
    daemons.stop("worker-a")

    lines = parse_lines(daemons.log("worker-a"))
    events = [line.get("event") for line in lines]
    started = next(line for line in lines if line.get("event") == "worker.started")
    assert "worker.stopped" in events
    assert started["partitions"] == "a"
    assert started["prefetch"] == 256
    assert started["logger"] == "mpnn_async.runtime.worker"
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
