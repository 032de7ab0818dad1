"""The network spec: layer widths, activations, loss, dtype and seeded initialisation."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from mpnn_async.errors import ConfigError
from mpnn_async.model.activations import Activation
from mpnn_async.model.losses import Loss

__all__ = ["LayerSpec", "NetworkSpec", "NeuronId", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = ("float32", "float64")

# A neuron id is (layer, index); layer 0 is the input, layers 1..L are dense.
NeuronId = tuple[int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class LayerSpec:
    """One dense layer: `width` neurons, each with a row of W, a bias and an activation."""

    width: int
    activation: Activation


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A multilayer perceptron; layer l has weights of shape (width[l], width[l-1])."""

    input_width: int
    layers: tuple[LayerSpec, ...]
    loss: Loss = Loss.SOFTMAX_CROSS_ENTROPY
    dtype: str = "float64"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive_int("model.input", self.input_width)
        if not self.layers:
            raise ConfigError("model.layers", "is empty", fix="give at least one dense layer")
        for index, layer in enumerate(self.layers):
            _check_positive_int(f"model.layers[{index}].width", layer.width)
        if self.dtype not in SUPPORTED_DTYPES:
            raise ConfigError(
                "model.dtype", f"unsupported dtype {self.dtype!r}", fix="use float32 or float64"
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError("model.seed", f"must be a non-negative integer, got {self.seed!r}")
        # Plain strings become enum members because code downstream compares
        # with `is`, so a "relu" string would otherwise get Xavier instead of He init.
        layers = tuple(
            LayerSpec(
                width=layer.width,
                activation=_enum_field(
                    Activation, layer.activation, f"model.layers[{index}].activation"
                ),
            )
            for index, layer in enumerate(self.layers)
        )
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "loss", _enum_field(Loss, self.loss, "model.loss"))

    @property
    def depth(self) -> int:
        """Number of dense layers, L."""
        return len(self.layers)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def width(self, layer: int) -> int:
        """Return the neuron count of `layer`, where layer 0 is the input."""
        if layer == 0:
            return self.input_width
        return self.layers[layer - 1].width

    def activation(self, layer: int) -> Activation:
        return self.layers[layer - 1].activation

    def weight_shape(self, layer: int) -> tuple[int, int]:
        return (self.width(layer), self.width(layer - 1))

    def parameter_count(self) -> int:
        return sum(self.width(l) * (self.width(l - 1) + 1) for l in range(1, self.depth + 1))

    def init_layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the seeded initial (W, b) of one layer.

        He normal (std sqrt(2 / fan_in)) for relu, Xavier/Glorot normal
        (std sqrt(2 / (fan_in + fan_out))) otherwise; biases start at zero.
        Each layer draws from its own stream seeded by (seed, layer), so a
        partition can initialise its rows without building other layers.
        """
        fan_out, fan_in = self.weight_shape(layer)
        if self.activation(layer) is Activation.RELU:
            std = np.sqrt(2.0 / fan_in)
        else:
            std = np.sqrt(2.0 / (fan_in + fan_out))
        rng = np.random.default_rng([self.seed, layer])
        weights = (rng.standard_normal((fan_out, fan_in)) * std).astype(self.np_dtype)
        biases = np.zeros(fan_out, dtype=self.np_dtype)
        return weights, biases

    def init_parameters(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return [(W1, b1), ..., (WL, bL)] for the whole network."""
        return [self.init_layer(layer) for layer in range(1, self.depth + 1)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input_width,
            "layers": [
                {"width": layer.width, "activation": str(layer.activation)}
                for layer in self.layers
            ],
            "loss": str(self.loss),
            "dtype": self.dtype,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, field: str = "model") -> NetworkSpec:
        """Build a spec from the `[model]` table of a config, naming any bad field."""
        if not isinstance(data, Mapping):
            raise ConfigError(field, "must be a table")
        known = {"input", "layers", "loss", "dtype", "seed"}
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"{field}.{key}", "unknown key", fix=f"expected one of {sorted(known)}"
                )
        if "input" not in data:
            raise ConfigError(f"{field}.input", "missing", fix="set the input width, e.g. 64")
        raw_layers = data.get("layers")
        if not isinstance(raw_layers, (list, tuple)) or not raw_layers:
            if raw_layers is None:
                problem = "missing"
            else:
                problem = f"must be a non-empty list, got {raw_layers!r}"
            raise ConfigError(
                f"{field}.layers",
                problem,
                fix='give a list such as [{width = 128, activation = "relu"}]',
            )
        layers = tuple(
            _layer_from_dict(item, f"{field}.layers[{index}]")
            for index, item in enumerate(raw_layers)
        )
        loss_name = data.get("loss", Loss.SOFTMAX_CROSS_ENTROPY.value)
        loss = _enum_field(Loss, loss_name, f"{field}.loss")
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"{field}.seed", f"must be a non-negative integer, got {seed!r}")
        dtype = data.get("dtype", "float64")
        if dtype not in SUPPORTED_DTYPES:
            raise ConfigError(
                f"{field}.dtype", f"unsupported dtype {dtype!r}", fix="use float32 or float64"
            )
        return cls(
            input_width=_positive_int(data["input"], f"{field}.input"),
            layers=layers,
            loss=loss,
            dtype=dtype,
            seed=seed,
        )


def _layer_from_dict(item: Any, field: str) -> LayerSpec:
    if not isinstance(item, Mapping):
        raise ConfigError(field, "must be a table with width and activation")
    for key in item:
        if key not in ("width", "activation"):
            raise ConfigError(f"{field}.{key}", "unknown key", fix="use width and activation")
    if "width" not in item:
        raise ConfigError(f"{field}.width", "missing")
    width = _positive_int(item["width"], f"{field}.width")
    activation = _enum_field(Activation, item.get("activation", "relu"), f"{field}.activation")
    return LayerSpec(width=width, activation=activation)


def _enum_field(enum_type: Any, value: Any, field: str) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum_type)
        raise ConfigError(field, f"unknown value {value!r}", fix=f"use one of {choices}") from None


def _positive_int(value: Any, field: str) -> int:
    _check_positive_int(field, value)
    return int(value)


def _check_positive_int(field: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(field, f"must be a positive integer, got {value!r}")
