"""Exporting a model's latest stored weights to a file, as whole layers."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from mpnn_async.interchange.formats import FileFormat, detect_format, write_tensors
from mpnn_async.interchange.naming import Naming, layer_tensor_names
from mpnn_async.interchange.stored import StoredModel, read_stored_model
from mpnn_async.model.reference import Parameters
from mpnn_async.store import ModelStore

__all__ = ["ExportResult", "default_naming", "export_file", "tensors_from_parameters"]

log = logging.getLogger(__name__)

# safetensors metadata keys written by an export; importers ignore them.
METADATA_MODEL = "mpnn.model"
METADATA_STEP = "mpnn.step"


@dataclasses.dataclass(frozen=True, slots=True)
class ExportResult:
    """The file an export wrote, and the stored model it was read from."""

    path: str
    file_format: FileFormat
    naming: Naming
    stored: StoredModel


def default_naming(file_format: FileFormat) -> Naming:
    """Return the naming a format gets unless one is given: torch files hold a Sequential's state_dict."""
    return Naming.SEQUENTIAL if file_format is FileFormat.TORCH else Naming.LAYERS


def tensors_from_parameters(parameters: Parameters, naming: Naming) -> dict[str, np.ndarray]:
    """Return the tensors of whole-layer parameters [(W1, b1), ...] under `naming`."""
    tensors = {}
    for names, (weights, biases) in zip(layer_tensor_names(naming, len(parameters)), parameters, strict=True):
        tensors[names.weight] = weights
        tensors[names.bias] = biases
    return tensors


def export_file(
    model_store: ModelStore,
    path: str | os.PathLike[str],
    *,
    file_format: FileFormat | str | None = None,
    naming: Naming | str | None = None,
) -> ExportResult:
    """Write the model's latest stored weights to `path`, replacing any file there.

    The format is `file_format`, or the one of the file's extension; the
    naming defaults to `default_naming(format)`. A safetensors file also gets
    the model spec (JSON) and step as metadata.
    """
    resolved = detect_format(path, None if file_format is None else str(file_format))
    chosen = default_naming(resolved) if naming is None else Naming(naming)
    stored = read_stored_model(model_store)
    metadata = {
        METADATA_MODEL: json.dumps(stored.plan.spec.to_dict(), sort_keys=True),
        METADATA_STEP: str(stored.step),
    }
    write_tensors(path, resolved, tensors_from_parameters(stored.parameters, chosen), metadata=metadata)
    log.info(
        "interchange.exported model=%s step=%d path=%s format=%s naming=%s",
        model_store.model,
        stored.step,
        path,
        resolved,
        chosen,
    )
    return ExportResult(path=os.fspath(path), file_format=resolved, naming=chosen, stored=stored)
