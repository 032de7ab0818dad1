"""Tensor names of a network's weights in a file, and their mapping to dense layers 1..L.

Two namings are accepted:

- `layers` (canonical): `layers.<l>.weight` of shape (out, in) and
  `layers.<l>.bias` of shape (out,) for dense layer l = 1..L. W is stored as
  `torch.nn.Linear.weight` is, so a layer computes `a @ W.T + b`.
- `sequential`: the `state_dict` of a `torch.nn.Sequential` of `Linear` and
  activation modules, `<module index>.weight` and `<module index>.bias`.
  Activation modules have no parameters, so their indices are skipped; the
  Linear modules, in index order, are dense layers 1..L. The activations come
  from the model config, because a state_dict does not record them.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Collection

from mpnn_async.errors import InvalidInputError
from mpnn_async.model.activations import Activation
from mpnn_async.model.spec import NetworkSpec

__all__ = [
    "LayerTensors",
    "Naming",
    "detect_naming",
    "layer_tensor_names",
    "map_tensor_names",
    "torch_sequential_text",
]

# Layer numbers start at 1; module indices at 0. No leading zeros, so every
# layer has exactly one spelling.
_LAYERS_NAME = re.compile(r"layers\.([1-9][0-9]*)\.(weight|bias)")
_SEQUENTIAL_NAME = re.compile(r"(0|[1-9][0-9]*)\.(weight|bias)")
# Names such as `net.0.weight` come from a module that wraps the Sequential.
_PREFIXED_SEQUENTIAL_NAME = re.compile(r"(.+)\.(0|[1-9][0-9]*)\.(weight|bias)")
# Names listed in an error message at most.
_MAX_LISTED = 8

_TORCH_ACTIVATIONS = {
    Activation.RELU: "ReLU()",
    Activation.TANH: "Tanh()",
    Activation.SIGMOID: "Sigmoid()",
    Activation.GELU: "GELU(approximate='tanh')",
    Activation.IDENTITY: "Identity()",
}


class Naming(enum.StrEnum):
    """The naming scheme that maps a file's tensor names to dense layers."""

    # layers.<l>.weight and layers.<l>.bias, l = 1..L
    LAYERS = "layers"
    # <module index>.weight and .bias of a torch.nn.Sequential
    SEQUENTIAL = "sequential"


@dataclasses.dataclass(frozen=True, slots=True)
class LayerTensors:
    """The names of one dense layer's weight and bias tensors in a file."""

    layer: int
    weight: str
    bias: str
    # Index of the Linear module in a torch.nn.Sequential; None for the `layers` naming.
    module: int | None = None

    @property
    def label(self) -> str:
        """The layer as error messages name it, with its module index when there is one."""
        if self.module is None:
            return f"layer {self.layer}"
        return f"layer {self.layer} (module {self.module})"


def layer_tensor_names(naming: Naming, depth: int) -> list[LayerTensors]:
    """Return the names an export writes for layers 1..depth.

    The `sequential` naming puts Linear l at module index 2(l-1), the layout of
    `Sequential(Linear, activation, Linear, activation, ...)`.
    """
    names = []
    for layer in range(1, depth + 1):
        if naming is Naming.LAYERS:
            names.append(LayerTensors(layer, f"layers.{layer}.weight", f"layers.{layer}.bias"))
        else:
            module = 2 * (layer - 1)
            names.append(LayerTensors(layer, f"{module}.weight", f"{module}.bias", module))
    return names


def detect_naming(names: Collection[str]) -> Naming:
    """Return the naming of a file's tensor names; raise InvalidInputError if it has none or both."""
    layer_names = sorted(name for name in names if _LAYERS_NAME.fullmatch(name))
    module_names = sorted(name for name in names if _SEQUENTIAL_NAME.fullmatch(name))
    if layer_names and module_names:
        raise InvalidInputError(
            f"the file mixes canonical names ({_listed(layer_names)}) with torch.nn.Sequential "
            f"names ({_listed(module_names)}); write every tensor in one naming"
        )
    if layer_names:
        return Naming.LAYERS
    if module_names:
        return Naming.SEQUENTIAL
    raise InvalidInputError(
        f"the file has no tensor named like 'layers.1.weight' or '0.weight' "
        f"(found {_listed(sorted(names)) or 'no tensors'}){_prefix_hint(names)}"
    )


def map_tensor_names(names: Collection[str], *, depth: int) -> tuple[Naming, list[LayerTensors]]:
    """Map a file's tensor names to dense layers 1..depth.

    Raises InvalidInputError naming every missing and every unexpected tensor.
    """
    naming = detect_naming(names)
    if naming is Naming.LAYERS:
        return naming, _map_layer_names(names, depth)
    return naming, _map_module_names(names, depth)


def _map_layer_names(names: Collection[str], depth: int) -> list[LayerTensors]:
    expected = layer_tensor_names(Naming.LAYERS, depth)
    expected_names = [name for layer in expected for name in (layer.weight, layer.bias)]
    missing = [name for name in expected_names if name not in names]
    unexpected = sorted(set(names) - set(expected_names), key=_natural_key)
    _raise_for_names(missing, unexpected, depth)
    return expected


def _map_module_names(names: Collection[str], depth: int) -> list[LayerTensors]:
    parameters: dict[int, set[str]] = {}
    unexpected = []
    for name in names:
        match = _SEQUENTIAL_NAME.fullmatch(name)
        if match is None:
            unexpected.append(name)
        else:
            parameters.setdefault(int(match.group(1)), set()).add(match.group(2))
    _raise_for_names([], sorted(unexpected, key=_natural_key), depth)

    modules = sorted(parameters)
    if len(modules) != depth:
        raise InvalidInputError(
            f"the file has {len(modules)} torch.nn.Sequential modules with parameters "
            f"(indices {', '.join(map(str, modules))}) but the model has {depth} dense layers; "
            "give one Linear module per dense layer"
        )
    layers = []
    for layer, module in enumerate(modules, start=1):
        tensors = LayerTensors(layer, f"{module}.weight", f"{module}.bias", module)
        if "weight" not in parameters[module]:
            raise InvalidInputError(f"{tensors.label}: weight {tensors.weight!r} is missing")
        if "bias" not in parameters[module]:
            raise InvalidInputError(
                f"{tensors.label}: bias {tensors.bias!r} is missing; every dense layer has a "
                "bias, so use Linear(..., bias=True)"
            )
        layers.append(tensors)
    return layers


def _raise_for_names(missing: list[str], unexpected: list[str], depth: int) -> None:
    problems = []
    if missing:
        problems.append(f"missing tensors {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_listed(unexpected)}")
    if problems:
        raise InvalidInputError(
            f"{'; '.join(problems)} (the model has {depth} dense layers, numbered 1..{depth}, "
            f"each with a weight and a bias){_prefix_hint(unexpected)}"
        )


def _prefix_hint(names: Collection[str]) -> str:
    for name in names:
        match = _PREFIXED_SEQUENTIAL_NAME.fullmatch(name)
        if match is not None:
            return (
                f"; names such as {name!r} come from a module that wraps the Sequential, "
                f"so save the Sequential's own state_dict (for example `model.{match.group(1)}"
                ".state_dict()`)"
            )
    return ""


def _listed(names: list[str]) -> str:
    listed = ", ".join(repr(name) for name in names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        listed += f" and {len(names) - _MAX_LISTED} more"
    return listed


def _natural_key(name: str) -> list[object]:
    # Sort 'layers.10.bias' after 'layers.9.bias'.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def torch_sequential_text(spec: NetworkSpec) -> str:
    """Return the `torch.nn.Sequential` whose state_dict has the `sequential` names of `spec`.

    Each layer is a Linear followed by its activation module, so Linear l is
    module 2(l-1); a trailing identity activation is left out.
    """
    modules = []
    for layer in range(1, spec.depth + 1):
        out_features, in_features = spec.weight_shape(layer)
        modules.append(f"Linear({in_features}, {out_features})")
        activation = spec.activation(layer)
        if not (layer == spec.depth and activation is Activation.IDENTITY):
            modules.append(_TORCH_ACTIVATIONS[activation])
    return f"Sequential({', '.join(modules)})"
