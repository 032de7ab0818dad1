"""Runtime settings of the daemons and commands: broker, store, namespace, limits.

Precedence: command-line flags, then `MPNN_*` environment variables, then
the `[runtime]` table of the config file, then the defaults below.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Mapping

from mpnn_async.errors import ConfigError

__all__ = ["RuntimeSettings", "add_runtime_arguments", "redacted"]

_ENV_PREFIX = "MPNN_"
# RabbitMQ 3.x accepts messages up to 128 MiB by default (max_message_size);
# RabbitMQ 4.0 lowered that default to 16 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeSettings:
    # amqp://user:password@host:port/vhost, or empty for the in-process transport.
    broker_url: str = ""
    store: str = "./mpnn-store"
    # Prefix of every exchange and queue name, so several deployments can share a broker.
    namespace: str = "mpnn"
    # The broker's max_message_size: bodies larger than this travel in chunks.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    prefetch: int = 256
    shutdown_timeout_s: float = 30.0
    ready_timeout_s: float = 120.0
    # Scheduler: time for one step to be applied, and for one micro-batch attempt
    # before it is retried on another route.
    step_timeout_s: float = 600.0
    micro_batch_timeout_s: float = 120.0
    # Threads of the BLAS library in a worker process; 0 keeps the library's own
    # default (OpenBLAS: one per core). None (not set) means 1 for `mpnn worker`
    # and cores / workers for the workers that `mpnn train` starts.
    blas_threads: int | None = None
    # Local directory where a worker keeps its partitions' optimizer state in
    # files, updated in row chunks; empty keeps the state in RAM.
    optimizer_state_dir: str = ""

    def __repr__(self) -> str:
        return (
            f"<RuntimeSettings broker={redacted(self.broker_url) or 'in-process'} "
            f"store={self.store} namespace={self.namespace}>"
        )

    @classmethod
    def resolve(
        cls,
        *,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        file_table: Mapping[str, Any] | None = None,
    ) -> RuntimeSettings:
        """Merge flags > environment > file; values left None in `flags` fall through."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        fields = {field.name: field for field in dataclasses.fields(cls)}
        for key, value in (file_table or {}).items():
            if key not in fields:
                raise ConfigError(f"runtime.{key}", "unknown key", fix=f"expected one of {sorted(fields)}")
            values[key] = _convert(key, value, fields[key].type, f"runtime.{key}")
        for name, field in fields.items():
            env_name = _ENV_PREFIX + name.upper()
            if env_name in environ:
                values[name] = _convert(name, environ[env_name], field.type, env_name)
        for name, value in (flags or {}).items():
            if name in fields and value is not None:
                values[name] = _convert(name, value, fields[name].type, f"--{name.removesuffix('_s').replace('_', '-')}")
        return cls(**values)


_KIND_WORDS = {"int": "integer", "float": "number"}
# Integer fields for which 0 is a valid value, with the fix their error gives; the others must be positive.
_ZERO_ALLOWED_FIXES = {"blas_threads": "give a number of threads, or 0 for the BLAS library's default"}


def _convert(name: str, value: Any, type_name: Any, source: str) -> Any:
    # An optional field takes the same values as its plain type; None means "not set".
    kind = str(type_name).removesuffix(" | None")
    try:
        if kind == "int":
            result: Any = int(value)
            if result < 0 or (result == 0 and name not in _ZERO_ALLOWED_FIXES):
                raise ValueError
        elif kind == "float":
            result = float(value)
            if not result > 0:
                raise ValueError
        else:
            result = str(value)
    except (TypeError, ValueError):
        raise ConfigError(source, f"invalid value {redacted(str(value)) if name == 'broker_url' else value!r}",
                          fix=_ZERO_ALLOWED_FIXES.get(name, f"give a positive {_KIND_WORDS.get(kind, kind)}")) from None
    return result


def redacted(url: str) -> str:
    """Return `url` with any password replaced by ***."""
    from mpnn_async.transport import redact_url

    return redact_url(url) if url else url


def add_runtime_arguments(parser: argparse.ArgumentParser, *, broker: bool = True) -> None:
    """Add the flags shared by every command that talks to the broker or the store."""
    if broker:
        parser.add_argument(
            "--broker",
            dest="broker_url",
            help="broker URL amqp[s]://user:password@host:port/vhost (env MPNN_BROKER_URL); "
            "`mpnn train` without one runs on the in-process transport",
        )
        parser.add_argument(
            "--namespace", help="prefix of exchange and queue names (env MPNN_NAMESPACE, default mpnn)"
        )
        parser.add_argument(
            "--max-message-bytes",
            type=int,
            help="the broker's maximum message size (max_message_size) in bytes; larger blocks are sent "
            "in chunks (env MPNN_MAX_MESSAGE_BYTES, default 134217728 as on RabbitMQ 3.x; use 16777216 "
            "for RabbitMQ 4.x's default)",
        )
    parser.add_argument("--store", help="shared store directory (env MPNN_STORE, default ./mpnn-store)")
