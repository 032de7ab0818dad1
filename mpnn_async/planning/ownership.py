"""Validation of a complete neuron ownership: every neuron of every dense layer owned once."""

from __future__ import annotations

import numbers
import types
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mpnn_async.errors import ConfigError
from mpnn_async.model.spec import NetworkSpec
from mpnn_async.planning.ids import describe_ids

__all__ = ["check_layer_assignment", "normalise_ownership"]

_UNOWNED = -1


def normalise_ownership(
    spec: NetworkSpec, partitions: Sequence[str], raw: Any, field: str
) -> Mapping[int, Mapping[str, tuple[int, ...]]]:
    """Validate `raw` (layer -> partition -> indices) and return it in canonical form.

    The result is read-only, has the layers 1..L in order, and for each layer
    lists only partitions with at least one neuron, in the order of
    `partitions`, each with its indices sorted. Raises `ConfigError` naming
    `field.<layer>.<partition>` and the offending indices unless every neuron
    is owned exactly once and every partition owns some neuron.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(field, "must be a mapping from layer to partition to neuron indices")
    for layer in raw:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise ConfigError(f"{field}.{layer}", "layer must be an integer")
        if not 1 <= int(layer) <= spec.depth:
            raise ConfigError(
                f"{field}.{layer}",
                f"layer {layer} does not exist",
                fix=f"the model has dense layers 1-{spec.depth}",
            )

    result: dict[int, Mapping[str, tuple[int, ...]]] = {}
    for layer in range(1, spec.depth + 1):
        if layer not in raw:
            raise ConfigError(
                f"{field}.{layer}", f"layer {layer} has no owners", fix="assign its neurons"
            )
        result[layer] = _normalise_layer(spec.width(layer), layer, partitions, raw[layer], field)

    for name in partitions:
        if not any(name in owned for owned in result.values()):
            raise ConfigError(
                "partitions",
                f"partition {name!r} owns no neuron in any layer",
                fix="remove it from the partitions or give it neurons",
            )
    return types.MappingProxyType(result)


def _normalise_layer(
    width: int, layer: int, partitions: Sequence[str], raw: Any, field: str
) -> Mapping[str, tuple[int, ...]]:
    layer_field = f"{field}.{layer}"
    if not isinstance(raw, Mapping):
        raise ConfigError(layer_field, "must be a mapping from partition to neuron indices")
    for name in raw:
        if name not in partitions:
            raise ConfigError(
                f"{layer_field}.{name}",
                f"unknown partition {name!r}",
                fix=f"use one of {list(partitions)}",
            )
    assignment = [
        (name, _index_array(raw[name], f"{layer_field}.{name}"))
        for name in partitions
        if name in raw
    ]
    owned = check_layer_assignment(
        layer=layer,
        width=width,
        assignment=assignment,
        layer_field=layer_field,
        partition_field=lambda name: f"{layer_field}.{name}",
    )
    return types.MappingProxyType(owned)


def check_layer_assignment(
    *,
    layer: int,
    width: int,
    assignment: Sequence[tuple[str, np.ndarray]],
    layer_field: str,
    partition_field: Callable[[str], str],
) -> dict[str, tuple[int, ...]]:
    """Check that `assignment` gives each of the `width` neurons of `layer` to one partition.

    `assignment` lists (partition, indices) in plan order. Returns partition ->
    sorted indices for the partitions with at least one neuron. Errors name
    `partition_field(name)` for a partition's own mistake (out of range,
    listed twice, already owned) and `layer_field` for neurons that no partition owns.
    """
    owner = np.full(width, _UNOWNED, dtype=np.int64)
    names = [name for name, _ids in assignment]
    owned: dict[str, tuple[int, ...]] = {}
    for position, (name, ids) in enumerate(assignment):
        field = partition_field(name)
        _check_range(ids, width, layer, name, field)
        unique, counts = np.unique(ids, return_counts=True)
        repeated = unique[counts > 1]
        if repeated.size:
            raise ConfigError(
                field,
                f"partition {name!r} lists {describe_ids('neuron', repeated.tolist())} "
                f"of layer {layer} more than once",
                fix="list each neuron once",
            )
        already_owned = unique[owner[unique] != _UNOWNED]
        if already_owned.size:
            # Report the overlap with one other partition, so the message stays exact.
            other_position = owner[already_owned[0]]
            overlap = already_owned[owner[already_owned] == other_position]
            other = names[int(other_position)]
            raise ConfigError(
                field,
                f"partitions {other!r} and {name!r} both claim "
                f"{describe_ids('neuron', overlap.tolist())} of layer {layer}",
                fix="give each neuron to one partition",
            )
        owner[unique] = position
        if unique.size:
            owned[name] = tuple(unique.tolist())

    unowned = np.flatnonzero(owner == _UNOWNED)
    if unowned.size:
        raise ConfigError(
            layer_field,
            f"layer {layer} has no owner for {describe_ids('neuron', unowned.tolist())}",
            fix="assign every neuron of the layer to one partition",
        )
    return owned


def _index_array(values: Any, field: str) -> np.ndarray:
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise ConfigError(
                field, f"must be a 1-D integer array, got {values.dtype} of shape {values.shape}"
            )
        return values.astype(np.int64)
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, range)):
        raise ConfigError(field, f"must be a list of neuron indices, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(field, f"neuron indices must be integers, got {value!r}")
    try:
        return np.array([int(value) for value in values], dtype=np.int64)
    except OverflowError:
        raise ConfigError(field, "a neuron index does not fit in 64 bits") from None


def _check_range(ids: np.ndarray, width: int, layer: int, name: str, field: str) -> None:
    outside = ids[(ids < 0) | (ids >= width)]
    if outside.size:
        raise ConfigError(
            field,
            f"partition {name!r} lists {describe_ids('neuron', outside.tolist())}, "
            f"out of range for layer {layer}, which has {width} neurons",
            fix=f"use indices 0-{width - 1}",
        )
