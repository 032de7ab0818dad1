"""A model's latest stored weights as whole layers, whatever plan cut them into partitions."""

from __future__ import annotations

import dataclasses
import logging
import time

from mpnn_async.errors import ConflictError, StoreError
from mpnn_async.model.reference import Parameters
from mpnn_async.planning import Plan
from mpnn_async.runtime.weights import load_parameters
from mpnn_async.store import ModelStore, NotFoundError, Version

__all__ = ["StoredModel", "read_stored_model", "read_stored_plan"]

log = logging.getLogger(__name__)

# A job commits its partitions one after another at each persisted step, so a
# reader may find them at two different steps. It then reads again after a pause.
_READ_ATTEMPTS = 5
_RETRY_DELAY_S = 0.2


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class StoredModel:
    """Whole-layer weights of a model, read from one consistent set of partition versions."""

    plan: Plan
    parameters: Parameters
    # Optimizer steps applied to the weights (0 for new or imported weights).
    step: int
    # Partition name -> the version number that was read.
    versions: dict[str, int]

    def __repr__(self) -> str:
        return f"<StoredModel plan={self.plan.plan_id} step={self.step} versions={self.versions}>"


def read_stored_plan(model_store: ModelStore) -> tuple[Plan, dict[str, Version]]:
    """Return the plan the model's partitions are stored under, and their latest versions.

    That plan is the one whose every partition's latest version names it.
    Partitions of an older plan that the current one dropped are left out.
    Raises NotFoundError for a model without partitions, and StoreError when
    no plan, or more than one, has all its partitions stored under it.
    """
    names = model_store.list_partitions()
    if not names:
        raise NotFoundError(
            f"model {model_store.model!r} not found in store {str(model_store.store.root)!r}: it has "
            "no stored partitions; train or import it first, or check --store"
        )
    versions = {name: model_store.store.read(model_store.partition_key(name)) for name in names}
    plan_ids = sorted(
        {version.meta["plan_id"] for version in versions.values() if isinstance(version.meta.get("plan_id"), str)}
    )
    complete = []
    for plan_id in plan_ids:
        plan = Plan.from_dict(model_store.load_plan(plan_id))
        if all(
            name in versions and versions[name].meta.get("plan_id") == plan_id
            for name in plan.partitions
        ):
            complete.append(plan)
    if len(complete) != 1:
        stored_under = {name: version.meta.get("plan_id") for name, version in versions.items()}
        problem = "no plan has" if not complete else "several plans have"
        raise StoreError(
            f"{problem} all partitions of model {model_store.model!r} stored under it "
            f"(partition -> plan: {stored_under}); an interrupted write leaves this, so import "
            "or train it under a new model name"
        )
    plan = complete[0]
    return plan, {name: versions[name] for name in plan.partitions}


def read_stored_model(model_store: ModelStore) -> StoredModel:
    """Assemble the whole layers of a model's latest stored partitions, all at one step.

    Raises StoreError if the partitions stay at different steps, which a job
    stopped in the middle of persisting a step leaves behind, and
    ConflictError if a running job keeps committing new versions.
    """
    previous: dict[str, int] | None = None
    for attempt in range(1, _READ_ATTEMPTS + 1):
        plan, versions = read_stored_plan(model_store)
        numbers = {name: version.number for name, version in versions.items()}
        steps = {name: int(version.meta["step"]) for name, version in versions.items()}
        if len(set(steps.values())) == 1:
            # load_parameters reads the latest versions again. Versions only
            # grow, so if every partition's latest is still the number read
            # above, load_parameters read exactly those versions.
            parameters = load_parameters(model_store, plan)
            if _latest_numbers(model_store, plan) == numbers:
                return StoredModel(
                    plan=plan, parameters=parameters, step=steps[plan.partitions[0]], versions=numbers
                )
        elif numbers == previous:
            raise StoreError(
                f"partitions of model {model_store.model!r} are at different steps {steps}; a job "
                "stopped while persisting a step leaves them so; import weights over them with "
                "`mpnn import --overwrite`, or train the model again"
            )
        log.debug("interchange.read.retry model=%s attempt=%d steps=%s", model_store.model, attempt, steps)
        previous = numbers
        time.sleep(_RETRY_DELAY_S)
    raise ConflictError(
        f"model {model_store.model!r} changed on each of {_READ_ATTEMPTS} reads, so a job is "
        "writing it; try again when the job has finished"
    )


def _latest_numbers(model_store: ModelStore, plan: Plan) -> dict[str, int | None]:
    return {name: model_store.store.latest_version(model_store.partition_key(name)) for name in plan.partitions}
