"""Cutting full-network parameters into partition slices and stitching them back.

Partition `p` owns, in layer l, the rows `plan.neurons(p, l)` of W_l (shape
(width[l], width[l-1])) and the same entries of b_l.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mpnn_async.errors import InvalidInputError
from mpnn_async.planning.plan import Plan

__all__ = ["LayerParameters", "assemble_parameters", "slice_parameters"]

# (W, b) of one layer, or of one partition's rows of it.
LayerParameters = tuple[np.ndarray, np.ndarray]


def slice_parameters(
    plan: Plan, partition: str, full_params: Sequence[LayerParameters]
) -> dict[int, LayerParameters]:
    """Return {layer: (W[S], b[S])} for each layer where `partition` owns the neurons S.

    `full_params` is [(W1, b1), ..., (WL, bL)]. The slices are copies, so
    changing them leaves `full_params` untouched.
    """
    if len(full_params) != plan.depth:
        raise InvalidInputError(
            f"full_params has {len(full_params)} layers but plan {plan.plan_id} has {plan.depth}"
        )
    for layer, (weights, biases) in enumerate(full_params, start=1):
        expected_shape = plan.spec.weight_shape(layer)
        _check_shapes(weights, biases, expected_shape, f"layer {layer}")

    slices: dict[int, LayerParameters] = {}
    for layer in plan.layers_of(partition):
        weights, biases = full_params[layer - 1]
        rows = plan.neurons(partition, layer)
        slices[layer] = (weights[rows], biases[rows])
    return slices


def assemble_parameters(
    plan: Plan, slices: Mapping[str, Mapping[int, LayerParameters]]
) -> list[LayerParameters]:
    """Stitch every partition's {layer: (W_rows, b_rows)} into [(W1, b1), ..., (WL, bL)].

    Every partition of the plan must give exactly the layers it owns, with one
    row per owned neuron. The result has the model's dtype.
    """
    for name in slices:
        if name not in plan.partitions:
            raise InvalidInputError(
                f"slices name partition {name!r}, which plan {plan.plan_id} does not have"
            )
    dtype = plan.spec.np_dtype
    full = [
        (
            np.zeros(plan.spec.weight_shape(layer), dtype=dtype),
            np.zeros(plan.spec.width(layer), dtype=dtype),
        )
        for layer in range(1, plan.depth + 1)
    ]
    for name in plan.partitions:
        if name not in slices:
            raise InvalidInputError(f"slices of partition {name!r} are missing")
        partition_slices = slices[name]
        expected_layers = plan.layers_of(name)
        if sorted(partition_slices) != list(expected_layers):
            raise InvalidInputError(
                f"partition {name!r} gave layers {sorted(partition_slices)} but owns layers "
                f"{list(expected_layers)}"
            )
        for layer in expected_layers:
            rows = plan.neurons(name, layer)
            weights, biases = partition_slices[layer]
            expected_shape = (len(rows), plan.spec.width(layer - 1))
            _check_shapes(weights, biases, expected_shape, f"partition {name!r} layer {layer}")
            full[layer - 1][0][rows] = weights
            full[layer - 1][1][rows] = biases
    return full


def _check_shapes(
    weights: np.ndarray, biases: np.ndarray, weight_shape: tuple[int, int], where: str
) -> None:
    if np.shape(weights) != weight_shape:
        raise InvalidInputError(
            f"{where}: W has shape {np.shape(weights)}, expected {weight_shape}"
        )
    if np.shape(biases) != (weight_shape[0],):
        raise InvalidInputError(
            f"{where}: b has shape {np.shape(biases)}, expected ({weight_shape[0]},)"
        )
