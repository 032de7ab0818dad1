"""The plan: which partition owns which neurons of each dense layer, and what follows from it.

A plan is content-addressed. Its canonical JSON is orjson output with sorted
keys and no whitespace:

    {"format":1,
     "model":{...NetworkSpec.to_dict()...},
     "ownership":{"1":{"a":[0,1,...],"b":[...]},"2":{...}},
     "partitions":["a","b"]}

`ownership` maps each dense layer (as a decimal string, because JSON keys are
strings) to the partitions that own at least one of its neurons, each with its
sorted neuron indices. `partitions` keeps the plan's order, which is also the
fixed order in which partial gradients are summed. The plan id is the first 16
hex digits (64 bits) of the SHA-256 of that JSON, so equal plans get equal ids
and any change to the model or the ownership changes the id.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Mapping

import numpy as np
import orjson

from mpnn_async.errors import ConfigError, InvalidInputError
from mpnn_async.model.optim import OptimizerKind
from mpnn_async.model.spec import NetworkSpec
from mpnn_async.planning import cost, naming
from mpnn_async.planning.ownership import normalise_ownership

__all__ = ["FORMAT_VERSION", "PLAN_ID_HEX_CHARS", "Plan"]

# Version of the canonical JSON layout; a reader rejects any other value.
FORMAT_VERSION = 1

# Length of `Plan.plan_id`: the first 16 hex digits (64 bits) of the SHA-256.
PLAN_ID_HEX_CHARS = 16

_JSON_KEYS = ("format", "model", "ownership", "partitions")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Plan:
    """An immutable, validated assignment of every dense-layer neuron to one partition.

    The constructor normalises `ownership` (sorted tuples, partitions in plan
    order, empty entries dropped) and raises `ConfigError` unless every neuron
    of every dense layer is owned exactly once and every partition owns at
    least one neuron. Layer 0, the input, belongs to the scheduler.
    """

    spec: NetworkSpec
    # Partition names; this order is the summation order of partial gradients.
    partitions: tuple[str, ...]
    # layer (1..L) -> partition -> sorted neuron indices, only non-empty entries.
    ownership: Mapping[int, Mapping[str, tuple[int, ...]]]
    # (partition, layer) -> read-only int64 array of the same indices, for `neurons`.
    _arrays: dict[tuple[str, int], np.ndarray] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, NetworkSpec):
            raise TypeError(f"spec must be a NetworkSpec, got {type(self.spec).__name__}")
        partitions = naming.validate_partition_names(self.partitions, "partitions")
        ownership = normalise_ownership(self.spec, partitions, self.ownership, "ownership")
        object.__setattr__(self, "partitions", partitions)
        object.__setattr__(self, "ownership", ownership)
        arrays: dict[tuple[str, int], np.ndarray] = {}
        for layer, owned in ownership.items():
            for name, ids in owned.items():
                array = np.array(ids, dtype=np.int64)
                array.setflags(write=False)
                arrays[(name, layer)] = array
        object.__setattr__(self, "_arrays", arrays)

    # -- identity and serialisation ---------------------------------------------------------

    @property
    def model(self) -> dict[str, Any]:
        """The model spec as the dict of the `[model]` table (a new copy on each call)."""
        return self.spec.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as plain JSON-compatible data (the canonical layout)."""
        return {
            "format": FORMAT_VERSION,
            "model": self.spec.to_dict(),
            "ownership": {
                str(layer): {name: list(ids) for name, ids in owned.items()}
                for layer, owned in self.ownership.items()
            },
            "partitions": list(self.partitions),
        }

    def to_json(self) -> bytes:
        """Return the canonical JSON: sorted keys, no whitespace, integers only."""
        return self._canonical_json

    @functools.cached_property
    def _canonical_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS)

    @functools.cached_property
    def plan_id(self) -> str:
        """The first 16 hex digits of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self._canonical_json).hexdigest()[:PLAN_ID_HEX_CHARS]

    @classmethod
    def from_json(cls, data: bytes | str) -> Plan:
        """Parse and fully validate a plan from JSON, such as one read from the store."""
        try:
            decoded = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise ConfigError("plan", f"invalid JSON: {error}") from None
        return cls.from_dict(decoded)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """Build and fully validate a plan from the canonical layout."""
        if not isinstance(data, Mapping):
            raise ConfigError("plan", "must be a JSON object")
        for key in data:
            if key not in _JSON_KEYS:
                raise ConfigError(key, "unknown key", fix=f"expected {list(_JSON_KEYS)}")
        for key in _JSON_KEYS:
            if key not in data:
                raise ConfigError(key, "missing")
        if type(data["format"]) is not int or data["format"] != FORMAT_VERSION:
            raise ConfigError(
                "format",
                f"unsupported plan format {data['format']!r}",
                fix=f"this version reads format {FORMAT_VERSION}; rebuild the plan with it",
            )
        spec = NetworkSpec.from_dict(data["model"], field="model")
        raw_ownership = data["ownership"]
        if not isinstance(raw_ownership, Mapping):
            raise ConfigError("ownership", "must be an object keyed by layer")
        ownership: dict[int, Any] = {}
        for key, value in raw_ownership.items():
            if not (isinstance(key, str) and key.isdecimal() and key == str(int(key))):
                raise ConfigError(
                    f"ownership.{key}", 'layer key must be a decimal integer such as "1"'
                )
            ownership[int(key)] = value
        return cls(spec=spec, partitions=data["partitions"], ownership=ownership)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return self._canonical_json == other._canonical_json

    def __hash__(self) -> int:
        return hash(self._canonical_json)

    def __repr__(self) -> str:
        widths = "-".join(str(self.spec.width(layer)) for layer in range(self.depth + 1))
        return (
            f"<Plan {self.plan_id} model={widths} {self.spec.dtype} "
            f"partitions={','.join(self.partitions)}>"
        )

    # -- ownership --------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Number of dense layers, L."""
        return self.spec.depth

    def neurons(self, partition: str, layer: int) -> np.ndarray:
        """Return the sorted int64 neuron indices of `partition` in `layer` (read-only).

        The array is empty when the partition owns no neuron there.
        """
        self._check_partition(partition)
        self._check_layer(layer)
        array = self._arrays.get((partition, int(layer)))
        if array is None:
            return np.empty(0, dtype=np.int64)
        return array

    def owners(self, layer: int) -> tuple[str, ...]:
        """Return the partitions that own at least one neuron of `layer`, in plan order."""
        self._check_layer(layer)
        return tuple(self.ownership[layer])

    def layers_of(self, partition: str) -> tuple[int, ...]:
        """Return the dense layers in which `partition` owns at least one neuron, ascending."""
        self._check_partition(partition)
        return tuple(layer for layer, owned in self.ownership.items() if partition in owned)

    def parameter_count(self, partition: str, layer: int | None = None) -> int:
        """Count the weights and biases that `partition` owns, in one layer or in all."""
        layers = self.layers_of(partition) if layer is None else (layer,)
        return sum(
            len(self.neurons(partition, lay)) * (self.spec.width(lay - 1) + 1) for lay in layers
        )

    # -- message flow -----------------------------------------------------------------------

    def forward_sources(self, partition: str, layer: int) -> tuple[str, ...]:
        """Return the peers whose slices of a[layer-1] `partition` receives to compute `layer`.

        They are the other owners of layer-1, or `("scheduler",)` for layer 1,
        whose input comes from the scheduler. A slice of its own is local.
        """
        self._check_owns(partition, layer)
        if layer == 1:
            return (naming.SCHEDULER,)
        return self._others(layer - 1, partition)

    def forward_targets(self, partition: str, layer: int) -> tuple[str, ...]:
        """Return the peers to which `partition` sends its slice of a[layer].

        They are the other owners of layer+1, or `("scheduler",)` for the last layer.
        """
        self._check_owns(partition, layer)
        if layer == self.depth:
            return (naming.SCHEDULER,)
        return self._others(layer + 1, partition)

    def backward_sources(self, partition: str, layer: int) -> tuple[str, ...]:
        """Return the peers whose partial gradients for its neurons of `layer` it sums.

        They are the other owners of layer+1, or `("scheduler",)` for the last
        layer, where the scheduler sends the loss gradient.
        """
        self._check_owns(partition, layer)
        if layer == self.depth:
            return (naming.SCHEDULER,)
        return self._others(layer + 1, partition)

    def backward_targets(self, partition: str, layer: int) -> tuple[str, ...]:
        """Return the peers to which `partition` sends partial input gradients of `layer`.

        They are the other owners of layer-1, each sent only its own columns;
        empty for layer 1, because no gradient flows back to the input.
        """
        self._check_owns(partition, layer)
        if layer == 1:
            return ()
        return self._others(layer - 1, partition)

    # -- routing ----------------------------------------------------------------------------

    def routing_key(self, destination_partition: str) -> str:
        """Return the job-relative routing key of data for a partition: `part.<partition>`.

        The runtime prefixes the job, giving `<job>.part.<partition>`.
        """
        self._check_partition(destination_partition)
        return naming.partition_routing_key(destination_partition)

    def scheduler_routing_key(self) -> str:
        """Return the job-relative routing key of data for the scheduler: `sched`."""
        return naming.scheduler_routing_key()

    def bindings(self, partition: str) -> tuple[str, ...]:
        """Return the job-relative routing keys that the queue of `partition` binds."""
        self._check_partition(partition)
        return naming.partition_bindings(partition)

    # -- cost estimates ---------------------------------------------------------------------

    def boundary_traffic(self) -> tuple[cost.BoundaryTraffic, ...]:
        """Return the messages and bytes per row crossing each layer boundary, input to loss."""
        return cost.boundary_traffic(self)

    def partition_cost(
        self, partition: str, *, optimizer: OptimizerKind | str = OptimizerKind.ADAM
    ) -> cost.PartitionCost:
        """Return the parameter count and memory estimate of `partition` under `optimizer`."""
        self._check_partition(partition)
        return cost.partition_cost(self, partition, optimizer=optimizer)

    # -- helpers ----------------------------------------------------------------------------

    def _others(self, layer: int, partition: str) -> tuple[str, ...]:
        return tuple(name for name in self.ownership[layer] if name != partition)

    def _check_partition(self, partition: str) -> None:
        if partition not in self.partitions:
            raise InvalidInputError(
                f"unknown partition {partition!r}; plan {self.plan_id} has {list(self.partitions)}"
            )

    def _check_layer(self, layer: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise InvalidInputError(f"layer must be an integer, got {layer!r}")
        if not 1 <= layer <= self.depth:
            raise InvalidInputError(
                f"layer {layer} is not a dense layer of plan {self.plan_id}; "
                f"dense layers are 1-{self.depth}"
            )

    def _check_owns(self, partition: str, layer: int) -> None:
        self._check_partition(partition)
        self._check_layer(layer)
        if partition not in self.ownership[layer]:
            raise InvalidInputError(
                f"partition {partition!r} owns no neuron of layer {layer} in plan {self.plan_id}; "
                f"it owns layers {list(self.layers_of(partition))}"
            )
