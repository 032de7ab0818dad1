"""Training jobs: one schema for TOML job files and JSON job messages.

A job document has the tables `job`, `model`, `plan`, `optimizer` and
`dataset`. The TOML file and the JSON message published by `mpnn submit`
carry the same tables, so `JobSpec.from_dict` validates both; the JSON form
adds `"schema": "mpnn.job/1"`. `docs/job-format.md` documents every field.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

import orjson

from mpnn_async.config import load_toml
from mpnn_async.errors import ConfigError
from mpnn_async.model.optim import OptimizerSpec
from mpnn_async.model.spec import NetworkSpec

__all__ = ["JOB_SCHEMA", "JobSpec", "TrainingSpec"]

JOB_SCHEMA = "mpnn.job/1"
# No dots: a job name is one word of a topic routing key (`<job>.part.<partition>`).
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TOP_LEVEL = ("schema", "job", "model", "plan", "optimizer", "dataset")


@dataclasses.dataclass(frozen=True, slots=True)
class TrainingSpec:
    """The `[job]` table: the job's name and how it walks through the data."""

    name: str
    epochs: int = 1
    batch_rows: int = 64
    micro_batch_rows: int = 16
    # Micro-batches kept in flight at once inside a step (pipelining depth).
    in_flight: int = 4
    seed: int = 0
    # Stop after this many optimizer steps (0: run every epoch to the end).
    max_steps: int = 0
    # Commit the weights to the store every this many steps, and always after the last.
    # Each commit writes every partition's weights and optimizer state.
    persist_every_steps: int = 1
    # Name of the model in the store; defaults to the job name.
    model_name: str = ""

    @property
    def store_model(self) -> str:
        return self.model_name or self.name

    @classmethod
    def from_dict(cls, data: Any, *, field: str = "job") -> TrainingSpec:
        if not isinstance(data, Mapping):
            raise ConfigError(field, "missing or not a table", fix='add [job] with name = "..."')
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"{field}.{key}", "unknown key", fix=f"expected one of {names}")
        name = data.get("name")
        if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"{field}.name",
                f"invalid job name {name!r}",
                fix="use 1-64 letters, digits, '_' or '-', starting with a letter or digit",
            )
        model_name = data.get("model_name", "")
        if model_name and (not isinstance(model_name, str) or not _NAME_PATTERN.fullmatch(model_name)):
            raise ConfigError(f"{field}.model_name", f"invalid model name {model_name!r}")
        values: dict[str, Any] = {"name": name, "model_name": model_name}
        minimums = {
            "epochs": 1,
            "batch_rows": 1,
            "micro_batch_rows": 1,
            "in_flight": 1,
            "seed": 0,
            "max_steps": 0,
            "persist_every_steps": 1,
        }
        for key, minimum in minimums.items():
            if key in data:
                values[key] = _int_at_least(data[key], minimum, f"{field}.{key}")
        spec = cls(**values)
        if spec.micro_batch_rows > spec.batch_rows:
            raise ConfigError(
                f"{field}.micro_batch_rows",
                f"{spec.micro_batch_rows} is larger than batch_rows {spec.batch_rows}",
                fix="use micro_batch_rows <= batch_rows",
            )
        return spec

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated training job."""

    training: TrainingSpec
    model: NetworkSpec
    plan: Mapping[str, Any]
    optimizer: OptimizerSpec
    dataset: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.training.name

    def __repr__(self) -> str:
        widths = [self.model.input_width] + [layer.width for layer in self.model.layers]
        return f"<JobSpec {self.name} widths={widths} optimizer={self.optimizer.kind}>"

    def build_plan(self) -> Any:
        """Return the job's `Plan` (see mpnn_async.planning)."""
        from mpnn_async.planning import build_plan

        return build_plan(self.model, self.plan)

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        """Validate a job document (parsed TOML or JSON), naming the first invalid field."""
        if not isinstance(data, Mapping):
            raise ConfigError("job", "a job document must be a table/object")
        for key in data:
            if key not in _TOP_LEVEL:
                raise ConfigError(
                    key,
                    "unknown top-level table",
                    fix="a job has [job], [model], [plan], [optimizer], [dataset] and, in a file, [runtime]",
                )
        schema = data.get("schema", JOB_SCHEMA)
        if schema != JOB_SCHEMA:
            raise ConfigError("schema", f"unsupported job schema {schema!r}", fix=f"use {JOB_SCHEMA!r}")
        training = TrainingSpec.from_dict(data.get("job"))
        if "model" not in data:
            raise ConfigError("model", "missing", fix="add a [model] table")
        model = NetworkSpec.from_dict(data["model"])
        plan = data.get("plan", {})
        if not isinstance(plan, Mapping):
            raise ConfigError("plan", "must be a table")
        optimizer = OptimizerSpec.from_dict(data.get("optimizer", {}))
        dataset = data.get("dataset")
        if not isinstance(dataset, Mapping):
            raise ConfigError("dataset", "missing or not a table", fix='add [dataset] with name = "digits"')
        from mpnn_async.data import DatasetSpec

        DatasetSpec.from_dict(dataset)
        job = cls(
            training=training, model=model, plan=dict(plan), optimizer=optimizer, dataset=dict(dataset)
        )
        job.build_plan()
        return job

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        """Load a job file; a relative dataset path is taken relative to the file's folder."""
        document = dict(load_toml(path))
        document.pop("runtime", None)
        return cls.from_dict(anchor_dataset_paths(document, Path(path).resolve().parent))

    @classmethod
    def from_json(cls, body: bytes) -> JobSpec:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise ConfigError("job", f"invalid JSON: {error}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": JOB_SCHEMA,
            "job": self.training.to_dict(),
            "model": self.model.to_dict(),
            "plan": dict(self.plan),
            "optimizer": self.optimizer.to_dict(),
            "dataset": dict(self.dataset),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)


def anchor_dataset_paths(document: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Return `document` with the dataset's relative file paths made absolute from `base_dir`.

    A job published to the queue is loaded by a scheduler that may run in
    another folder, so the paths it carries must not depend on where the
    file was read.
    """
    from mpnn_async.data import DatasetSpec

    dataset = document.get("dataset")
    if not isinstance(dataset, Mapping):
        return document
    anchored = DatasetSpec.from_dict(dataset).resolve_paths(base_dir).to_dict()
    return {**document, "dataset": anchored}


def _int_at_least(value: Any, minimum: int, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(field, f"must be an integer >= {minimum}, got {value!r}")
    return value
