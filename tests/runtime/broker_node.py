"""A private RabbitMQ node for tests that restart or cut off the broker.

The node runs as its own Erlang node (name `mpnn-test-<hex>@localhost`) on
free ports, with its database, logs, pid file, config and Erlang cookie in a
temporary directory, and without plugins. `rabbitmqctl` always gets `-n` and
the node's own HOME (so its own cookie), so it can only reach this node and
never the shared broker.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["PrivateBroker", "find_rabbitmq_scripts", "free_port"]

# Debian's /usr/sbin/rabbitmq-server and rabbitmqctl switch to the `rabbitmq`
# user and reset HOME, which would lose the node's own cookie and directories,
# so the scripts they wrap are preferred.
_SCRIPT_DIRECTORIES = ("/usr/lib/rabbitmq/bin",)
# RabbitMQ 3.10 boots in about 5 s on 2 idle cores.
BOOT_TIMEOUT_S = 90.0
CTL_TIMEOUT_S = 60.0


def find_rabbitmq_scripts() -> tuple[str, str] | None:
    """Return the paths of `rabbitmq-server` and `rabbitmqctl`, or None when RabbitMQ is not installed."""
    for directory in _SCRIPT_DIRECTORIES:
        server = Path(directory, "rabbitmq-server")
        ctl = Path(directory, "rabbitmqctl")
        if server.exists() and ctl.exists():
            return str(server), str(ctl)
    server_path = shutil.which("rabbitmq-server")
    ctl_path = shutil.which("rabbitmqctl")
    if server_path is None or ctl_path is None:
        return None
    return server_path, ctl_path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that nothing listens on right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class PrivateBroker:
    """One RabbitMQ node owned by a test: start, restart its app, stop.

    `listen_hosts` are the addresses of the AMQP listener (all on one port).
    The first one is the host of `url`. The node accepts the `guest` login
    from any address, because a worker in a network namespace is not on
    loopback.
    """

    def __init__(self, directory: Path, *, listen_hosts: tuple[str, ...] = ("127.0.0.1",)) -> None:
        scripts = find_rabbitmq_scripts()
        if scripts is None:
            raise FileNotFoundError("rabbitmq-server and rabbitmqctl are not installed")
        self.server_script, self.ctl_script = scripts
        self.directory = directory
        self.listen_hosts = listen_hosts
        self.node = f"mpnn-test-{secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.process is not None and self.process.poll() is None else "stopped"
        return f"<PrivateBroker {self.node} port={self.port} {state}>"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.listen_hosts[0]}:{self.port}/"

    def url_for(self, host: str) -> str:
        """Return the URL of the listener on `host`, one of `listen_hosts`."""
        return f"amqp://guest:guest@{host}:{self.port}/"

    def environment(self) -> dict[str, str]:
        base = self.directory
        environment = dict(os.environ)
        environment.update(
            {
                # Erlang reads the cookie from $HOME/.erlang.cookie, for the node and for rabbitmqctl.
                "HOME": str(base),
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(base / "log"),
                "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
                # An empty env file, so that the system's rabbitmq-env.conf (node name, flags) is not read.
                "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
                "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
                "RABBITMQ_QUORUM_DIR": str(base / "quorum"),
                "RABBITMQ_STREAM_DIR": str(base / "stream"),
                # Keep the Erlang distribution port on loopback.
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
                "ERL_EPMD_ADDRESS": "127.0.0.1",
            }
        )
        return environment

    @property
    def pid_file(self) -> Path:
        return self.directory / "node.pid"

    def _write_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        cookie = self.directory / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        listeners = [f"listeners.tcp.{index} = {host}:{self.port}" for index, host in enumerate(self.listen_hosts, 1)]
        (self.directory / "rabbitmq.conf").write_text("\n".join([*listeners, "loopback_users = none"]) + "\n")
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")

    def start(self) -> None:
        """Boot the node and wait until it accepts AMQP connections; raise with its log if it does not."""
        self._write_files()
        output = open(self.directory / "server.out", "wb")
        self.process = subprocess.Popen(
            [self.server_script],
            env=self.environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        output.close()
        completed = self._ctl("wait", "--timeout", str(int(BOOT_TIMEOUT_S)), str(self.pid_file), timeout_s=BOOT_TIMEOUT_S + 10)
        if completed.returncode != 0:
            details = self.diagnostics()
            self.stop()
            raise RuntimeError(f"RabbitMQ node {self.node} did not start within {BOOT_TIMEOUT_S} s:\n{details}")

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (the Erlang node stays up): every client loses its connection."""
        self._ctl_checked("stop_app")

    def start_app(self) -> None:
        """Start the RabbitMQ application again and wait until it accepts connections."""
        self._ctl_checked("start_app")
        self._ctl_checked("await_startup")

    def list(self, command: str, *fields: str) -> list[dict[str, Any]]:
        """Return the rows of `rabbitmqctl COMMAND FIELDS...` (list_queues, list_bindings, ...) as dicts."""
        output = self._ctl_checked(command, *fields, "--quiet", "--formatter", "json")
        rows: list[dict[str, Any]] = json.loads(output) if output.strip() else []
        for row in rows:
            if "arguments" in row:
                # rabbitmqctl gives AMQP field tables as [name, type, value] triples.
                row["arguments"] = {name: value for name, _type, value in row["arguments"]}
        return rows

    def consumer_queues(self) -> list[str]:
        """Return the name of the queue of every consumer, once per consumer."""
        return [row["queue_name"] for row in self.list("list_consumers", "queue_name")]

    def stop(self) -> None:
        """Stop the node with `rabbitmqctl stop`, or kill the process this object started."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self._ctl("stop", str(self.pid_file), timeout_s=CTL_TIMEOUT_S)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._kill_node(process)
        self.process = None

    def _kill_node(self, process: subprocess.Popen[bytes]) -> None:
        # The node runs in the session started for it, so its group id is the started pid.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)

    def diagnostics(self) -> str:
        """Return the tail of the node's startup output and log, for failure messages."""
        parts = []
        for path in [self.directory / "server.out", *sorted((self.directory / "log").glob("*.log"))]:
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def _ctl(self, *arguments: str, timeout_s: float = CTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.ctl_script, "-n", self.node, *arguments],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def _ctl_checked(self, *arguments: str) -> str:
        started = time.monotonic()
        completed = self._ctl(*arguments)
        if completed.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {self.node} {' '.join(arguments)} failed after "
                f"{time.monotonic() - started:.1f} s: {completed.stdout}{completed.stderr}"
            )
        return completed.stdout
