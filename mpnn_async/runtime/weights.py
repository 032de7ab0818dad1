"""Partition slices in the shared store: initialise, load, persist and assemble them.

One store object per partition contains, for each layer l it owns, the
arrays `W{l}` (its rows of W), `b{l}`, `neurons{l}` (the row indices) and the
optimizer state `W{l}.<name>` and `b{l}.<name>`. Its metadata records the plan
id and the number of optimizer steps applied (`step`).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from mpnn_async.errors import ConfigError, StoreError
from mpnn_async.model.optim import OptimizerSpec
from mpnn_async.model.reference import Parameters
from mpnn_async.planning import Plan, assemble_parameters
from mpnn_async.runtime import snapshots
from mpnn_async.runtime.partition import PartitionJob
from mpnn_async.runtime.state_file import OptimizerStateFile
from mpnn_async.store import ModelStore, VersionReader

# Versions of a partition kept in the store; older ones are pruned after each commit.
KEEP_VERSIONS = 3

__all__ = [
    "KEEP_VERSIONS",
    "load_parameters",
    "load_partition_job",
    "prepare_partitions",
    "save_partition_job",
]

log = logging.getLogger(__name__)


def prepare_partitions(
    model_store: ModelStore, plan: Plan, *, initial: Parameters | None = None
) -> int:
    """Make the store hold every partition of `plan`; return the step they are at.

    Partitions already stored under this plan are kept, so a job continues
    from them. A model stored under another plan is re-cut into this plan's
    partitions, weights and optimizer state alike. A new model is initialised
    from the spec's seed, or from `initial` when given.
    """
    model_store.save_plan(plan.to_dict(), plan_id=plan.plan_id)
    stored = {name: _read_or_none(model_store, name) for name in plan.partitions}
    if all(v is not None and v.meta.get("plan_id") == plan.plan_id for v in stored.values()):
        steps = {name: int(v.meta["step"]) for name, v in stored.items()}
        if len(set(steps.values())) != 1:
            raise StoreError(
                f"partitions of model {model_store.model!r} are at different steps {steps}; "
                "restore them from one checkpoint"
            )
        return next(iter(steps.values()))

    previous = _previous_layout(model_store, plan)
    if previous is not None:
        parameters, state, step = previous
        log.info("store.recut model=%s plan=%s step=%d", model_store.model, plan.plan_id, step)
    else:
        parameters = initial if initial is not None else plan.spec.init_parameters()
        state, step = {}, 0
        log.info("store.initialised model=%s plan=%s", model_store.model, plan.plan_id)
    for partition in plan.partitions:
        arrays = _partition_arrays(plan, partition, parameters, state)
        latest = stored[partition].number if stored[partition] is not None else None
        model_store.store.commit(
            model_store.partition_key(partition),
            arrays,
            {"plan_id": plan.plan_id, "step": step},
            expected_version=latest,
        )
    return step


def _read_or_none(model_store: ModelStore, partition: str) -> Any:
    key = model_store.partition_key(partition)
    if model_store.store.latest_version(key) is None:
        return None
    return model_store.store.read(key)


def _previous_layout(
    model_store: ModelStore, plan: Plan
) -> tuple[Parameters, dict[str, list[np.ndarray]], int] | None:
    """Assemble whole layers from the partitions of the plan the model was last stored under."""
    plan_ids = set()
    for partition in model_store.list_partitions():
        version = _read_or_none(model_store, partition)
        if version is not None:
            plan_ids.add(version.meta.get("plan_id"))
    if not plan_ids:
        return None
    if len(plan_ids) != 1:
        raise StoreError(
            f"model {model_store.model!r} contains partitions of several plans {sorted(plan_ids)}; "
            "remove the stale partitions or use a new model name"
        )
    old_plan = Plan.from_dict(model_store.load_plan(plan_ids.pop()))
    if old_plan.spec.to_dict() != plan.spec.to_dict():
        raise ConfigError(
            "model",
            f"the store already holds model {model_store.model!r} with another architecture",
            fix="use a new job.model_name, or the architecture stored before",
        )
    versions = {name: model_store.store.read(model_store.partition_key(name)) for name in old_plan.partitions}
    steps = {int(v.meta["step"]) for v in versions.values()}
    if len(steps) != 1:
        raise StoreError(f"partitions of model {model_store.model!r} are at different steps")
    return _assemble(old_plan, versions), _assemble_state(old_plan, versions), steps.pop()


def _partition_arrays(
    plan: Plan,
    partition: str,
    parameters: Parameters,
    state: Mapping[str, list[np.ndarray]],
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for layer in plan.layers_of(partition):
        rows = plan.neurons(partition, layer)
        weights, biases = parameters[layer - 1]
        arrays[f"neurons{layer}"] = rows
        arrays[f"W{layer}"] = np.ascontiguousarray(weights[rows])
        arrays[f"b{layer}"] = np.ascontiguousarray(biases[rows])
        for name, per_layer in state.items():
            arrays[f"{name.replace('#', str(layer))}"] = np.ascontiguousarray(per_layer[layer - 1][rows])
    return arrays


def _assemble(plan: Plan, versions: Mapping[str, Any]) -> Parameters:
    """Stitch the stored partition versions of `plan` into whole layers."""
    slices = {
        partition: {
            layer: (versions[partition].arrays[f"W{layer}"], versions[partition].arrays[f"b{layer}"])
            for layer in plan.layers_of(partition)
        }
        for partition in plan.partitions
    }
    return assemble_parameters(plan, slices)


def _assemble_state(plan: Plan, versions: Mapping[str, Any]) -> dict[str, list[np.ndarray]]:
    """Whole-layer optimizer state keyed by a name pattern such as `W#.exp_avg`."""
    names: set[str] = set()
    for version in versions.values():
        for key in version.arrays:
            if "." in key:
                parameter, state_name = key.split(".", 1)
                names.add(f"{parameter[0]}#.{state_name}")
    state: dict[str, list[np.ndarray]] = {}
    for pattern in sorted(names):
        per_layer = []
        for layer in range(1, plan.spec.depth + 1):
            shape = plan.spec.weight_shape(layer) if pattern.startswith("W") else (plan.spec.width(layer),)
            whole = np.zeros(shape, dtype=plan.spec.np_dtype)
            for partition in plan.owners(layer):
                key = pattern.replace("#", str(layer))
                arrays = versions[partition].arrays
                if key in arrays:
                    whole[plan.neurons(partition, layer)] = arrays[key]
            per_layer.append(whole)
        state[pattern] = per_layer
    return state


def load_parameters(model_store: ModelStore, plan: Plan) -> Parameters:
    """Return the whole network's latest stored weights, assembled from every partition."""
    versions = {name: model_store.store.read(model_store.partition_key(name)) for name in plan.partitions}
    return _assemble(plan, versions)


def load_partition_job(
    model_store: ModelStore,
    *,
    job: str,
    plan_id: str,
    partition: str,
    optimizer: Mapping[str, Any],
    expected_step: int,
    snapshot: str = "",
    version_number: int | None = None,
    generation: int = 0,
    replicas: tuple[str, ...] = (),
    optimizer_state_dir: str = "",
) -> PartitionJob:
    """Build a partition's job state from a stored version (the latest unless given) or a snapshot.

    Loading an older version (a checkpoint, after a failure) keeps fencing on
    the latest one, so the partition's next commit becomes the newest version
    and versions keep growing. With `optimizer_state_dir`, the optimizer state
    is copied in chunks into an OptimizerStateFile there instead of into
    memory, so only the weights are loaded into RAM.
    """
    plan = Plan.from_dict(model_store.load_plan(plan_id))
    if partition not in plan.partitions:
        raise ConfigError("partition", f"{partition!r} is not a partition of plan {plan_id}")
    key = model_store.partition_key(partition)
    latest = model_store.store.latest_version(key)
    if snapshot:
        reader = snapshots.open_snapshot_partition(model_store, snapshot, partition)
    else:
        reader = model_store.store.open_version(key, version=version_number)
    with reader:
        if reader.meta.get("plan_id") != plan_id:
            raise StoreError(
                f"partition {partition!r} of model {model_store.model!r} is stored under plan "
                f"{reader.meta.get('plan_id')!r}, the job uses {plan_id!r}"
            )
        step = int(reader.meta["step"])
        if step != expected_step:
            raise StoreError(
                f"partition {partition!r} is at step {step}, the job expects step {expected_step}"
            )
        # Store reads return new arrays that nothing else refers to, so the job takes them as they are.
        parameters = {
            layer: (reader.read(f"W{layer}"), reader.read(f"b{layer}"))
            for layer in plan.layers_of(partition)
        }
        state = _load_optimizer_state(reader, optimizer_state_dir)
        number = reader.number
    return PartitionJob(
        job=job,
        plan=plan,
        partition=partition,
        spec=plan.spec,
        optimizer=OptimizerSpec.from_dict(optimizer),
        parameters=parameters,
        optimizer_state=state,
        step=step,
        version=latest if latest is not None and not snapshot else number,
        model_name=model_store.model,
        generation=generation,
        replicas=replicas,
    )


def _load_optimizer_state(
    reader: VersionReader, directory: str
) -> dict[str, dict[str, np.ndarray]] | OptimizerStateFile:
    """Read the `<parameter>.<state>` arrays into memory, or into a state file in `directory`."""
    names = [name.split(".", 1) for name in reader.names if "." in name]
    if not directory:
        state: dict[str, dict[str, np.ndarray]] = {}
        for parameter, state_name in names:
            state.setdefault(parameter, {})[state_name] = reader.read(f"{parameter}.{state_name}")
        return state
    state_file = OptimizerStateFile(directory)
    try:
        for parameter, state_name in names:
            stored = reader.stored(f"{parameter}.{state_name}")
            chunks = reader.chunks(stored.name, state_file.chunk_bytes)
            state_file.load(parameter, state_name, stored.dtype, stored.shape, chunks)
    except BaseException:
        state_file.close()
        raise
    return state_file


def save_partition_job(model_store: ModelStore, job: PartitionJob) -> int:
    """Persist a partition's weights and optimizer state as a new version; return its number."""
    arrays: dict[str, np.ndarray] = {}
    for layer, (weights, biases) in job.parameters.items():
        arrays[f"neurons{layer}"] = job.plan.neurons(job.partition, layer)
        arrays[f"W{layer}"] = weights
        arrays[f"b{layer}"] = biases
    if isinstance(job.optimizer_state, OptimizerStateFile):
        # Streamed from the state file into the version file, chunk by chunk.
        arrays.update(job.optimizer_state.sources())
    else:
        for parameter, named in job.optimizer_state.items():
            for state_name, array in named.items():
                arrays[f"{parameter}.{state_name}"] = array
    version = model_store.store.commit(
        model_store.partition_key(job.partition),
        arrays,
        {"plan_id": job.plan.plan_id, "step": job.step, "job": job.job},
        expected_version=job.version,
    )
    job.version = version
    model_store.store.prune(model_store.partition_key(job.partition), keep=KEEP_VERSIONS)
    return version
