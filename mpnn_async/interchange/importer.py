"""Importing a network's weights from a file into the shared store, cut by a plan.

Imported weights start a model afresh: every partition is committed at step 0
with no optimizer state, so training continues from them as from a new model
initialised with them.

A model name that the store already contains is rejected unless `overwrite` is
set. With `overwrite`, the import commits a new version of each partition on
top of the latest one; each commit is fenced on the version read just before,
so a job that commits to the model at the same time makes one side fail with
ConflictError instead of silently losing its write. Nothing is deleted, and
older versions stay until pruning removes them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

import numpy as np

from mpnn_async.errors import ConfigError, InvalidInputError
from mpnn_async.interchange.formats import FileFormat, detect_format, read_tensors
from mpnn_async.interchange.naming import LayerTensors, Naming, map_tensor_names
from mpnn_async.interchange.stored import read_stored_plan
from mpnn_async.model.reference import Parameters
from mpnn_async.model.spec import NetworkSpec
from mpnn_async.planning import Plan, slice_parameters
from mpnn_async.runtime.weights import (
    load_partition_job,
    prepare_partitions,
    save_partition_job,
)
from mpnn_async.store import ModelStore

__all__ = ["ImportResult", "import_file", "import_parameters", "parameters_from_tensors"]

log = logging.getLogger(__name__)

# The job name recorded in the metadata of partition versions written by an import.
IMPORT_JOB = "import"


@dataclasses.dataclass(frozen=True, slots=True)
class ImportResult:
    """The result of an import: the model, plan and partition versions it committed."""

    model: str
    plan_id: str
    file_format: FileFormat
    naming: Naming
    parameter_count: int
    # Partition name -> the version number committed.
    versions: dict[str, int]
    # True when the model existed and its weights were replaced.
    replaced: bool


def parameters_from_tensors(
    spec: NetworkSpec, tensors: Mapping[str, np.ndarray], *, cast: bool = False
) -> tuple[Naming, Parameters]:
    """Return the naming of `tensors` and the whole-layer parameters [(W1, b1), ...] they give.

    Every tensor must have the shape of its layer in `spec` and the model's
    dtype; with `cast`, float tensors of another precision are converted.
    Raises InvalidInputError naming the layer (and tensor) of the first
    mismatch, non-float or non-finite tensor, and every missing or extra name.
    """
    naming, layers = map_tensor_names(tensors.keys(), depth=spec.depth)
    parameters = []
    for names in layers:
        out_features, in_features = spec.weight_shape(names.layer)
        weights = _checked(tensors[names.weight], (out_features, in_features), spec, names, "weight", cast)
        biases = _checked(tensors[names.bias], (out_features,), spec, names, "bias", cast)
        parameters.append((weights, biases))
    return naming, parameters


def _checked(
    array: np.ndarray,
    shape: tuple[int, ...],
    spec: NetworkSpec,
    names: LayerTensors,
    role: str,
    cast: bool,
) -> np.ndarray:
    tensor = names.weight if role == "weight" else names.bias
    where = f"{names.label}: {role}"

    if array.shape != shape:
        hint = ""
        if role == "weight" and array.shape == shape[::-1]:
            hint = "; it looks transposed: store W as (out, in), like torch.nn.Linear.weight"
        raise InvalidInputError(
            f"{where} shape {array.shape} does not match the model's {shape} (tensor {tensor!r}){hint}"
        )

    if array.dtype.kind != "f":
        raise InvalidInputError(
            f"{where} dtype {array.dtype} is not a floating-point type (tensor {tensor!r})"
        )
    if array.dtype.newbyteorder("=") != spec.np_dtype and not cast:
        raise InvalidInputError(
            f"{where} dtype {array.dtype.name} does not match the model's {spec.dtype} "
            f"(tensor {tensor!r}); set model.dtype = {array.dtype.name!r} in the config, or "
            "convert on import (--cast)"
        )

    # A fresh C-ordered array in native byte order. Same-dtype copies keep
    # every bit; a float64 value too large for float32 becomes infinity,
    # which the finiteness check below then reports.
    with np.errstate(over="ignore"):
        converted = np.array(array, dtype=spec.np_dtype, order="C", copy=True)

    bad = int(np.count_nonzero(~np.isfinite(converted)))
    if bad:
        converted_by_cast = array.dtype.newbyteorder("=") != converted.dtype
        after = f" after conversion to {spec.dtype}" if converted_by_cast else ""
        raise InvalidInputError(
            f"{where} has {bad} values that are NaN or infinite{after} (tensor {tensor!r}); "
            "replace them with finite values before importing"
        )
    return converted


def import_parameters(
    model_store: ModelStore, plan: Plan, parameters: Parameters, *, overwrite: bool = False
) -> tuple[dict[str, int], bool]:
    """Commit whole-layer `parameters`, cut into the partitions of `plan`, at step 0.

    Returns (partition -> committed version, whether an existing model was
    replaced). Raises InvalidInputError if the model exists and `overwrite`
    is false, and ConfigError if the stored model has another architecture.
    """
    _check_parameters(plan.spec, parameters)
    replaced = bool(model_store.list_partitions())
    if not replaced:
        prepare_partitions(model_store, plan, initial=parameters)
    elif not overwrite:
        raise InvalidInputError(
            f"model {model_store.model!r} already exists in store {str(model_store.store.root)!r}; "
            "import under another model name, or pass --overwrite to commit the imported weights "
            "as new versions of it"
        )
    else:
        _replace_parameters(model_store, plan, parameters)
    versions = {
        name: model_store.store.latest_version(model_store.partition_key(name)) or 0
        for name in plan.partitions
    }
    log.info(
        "interchange.imported model=%s plan=%s replaced=%s versions=%s",
        model_store.model,
        plan.plan_id,
        replaced,
        versions,
    )
    return versions, replaced


def _check_parameters(spec: NetworkSpec, parameters: Parameters) -> None:
    if len(parameters) != spec.depth:
        raise InvalidInputError(
            f"got parameters of {len(parameters)} layers, but the model has {spec.depth} dense layers"
        )
    for layer, (weights, biases) in enumerate(parameters, start=1):
        expected = {"weight": spec.weight_shape(layer), "bias": (spec.width(layer),)}
        for role, array in (("weight", weights), ("bias", biases)):
            if array.shape != expected[role] or array.dtype != spec.np_dtype:
                raise InvalidInputError(
                    f"layer {layer}: {role} has shape {array.shape} and dtype {array.dtype}, but "
                    f"the model's is {expected[role]} {spec.dtype}"
                )


def _replace_parameters(model_store: ModelStore, plan: Plan, parameters: Parameters) -> None:
    stored_plan, versions = read_stored_plan(model_store)
    if stored_plan.plan_id == plan.plan_id:
        steps = {name: int(version.meta["step"]) for name, version in versions.items()}
    else:
        _check_same_architecture(model_store, stored_plan.spec, plan.spec)
        # Re-cut the stored model into this plan's partitions, so each has a
        # version under this plan to fence the replacement on.
        step = prepare_partitions(model_store, plan)
        steps = {name: step for name in plan.partitions}
    for name in plan.partitions:
        job = load_partition_job(
            model_store,
            job=IMPORT_JOB,
            plan_id=plan.plan_id,
            partition=name,
            optimizer={},
            expected_step=steps[name],
        )
        job.parameters = slice_parameters(plan, name, parameters)
        job.optimizer_state = {}
        job.step = 0
        # Commits version job.version + 1, or raises ConflictError if another
        # writer committed after load_partition_job read job.version.
        save_partition_job(model_store, job)


def _check_same_architecture(model_store: ModelStore, stored: NetworkSpec, given: NetworkSpec) -> None:
    stored_fields, given_fields = stored.to_dict(), given.to_dict()
    differences = [key for key in given_fields if stored_fields.get(key) != given_fields[key]]
    if differences:
        stored_values = {key: stored_fields[key] for key in differences}
        raise ConfigError(
            "model",
            f"differs from the stored model {model_store.model!r} in {', '.join(differences)} "
            f"(stored: {stored_values})",
            fix="import under another model name, or use the stored [model] table",
        )


def import_file(
    model_store: ModelStore,
    plan: Plan,
    path: str | os.PathLike[str],
    *,
    file_format: FileFormat | str | None = None,
    cast: bool = False,
    overwrite: bool = False,
) -> ImportResult:
    """Read the weights file `path` and import it into `model_store` cut by `plan`.

    The format is `file_format`, or the one of the file's extension.
    """
    resolved = detect_format(path, None if file_format is None else str(file_format))
    tensor_file = read_tensors(path, resolved)
    naming, parameters = parameters_from_tensors(plan.spec, tensor_file.tensors, cast=cast)
    versions, replaced = import_parameters(model_store, plan, parameters, overwrite=overwrite)
    return ImportResult(
        model=model_store.model,
        plan_id=plan.plan_id,
        file_format=resolved,
        naming=naming,
        parameter_count=plan.spec.parameter_count(),
        versions=versions,
        replaced=replaced,
    )
