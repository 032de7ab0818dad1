"""One partition's numeric state for one job, and the rules for the blocks it accepts.

`PartitionJob` is synchronous and does no I/O: the worker hands it decoded
blocks, runs the computations it reports as ready (in an executor thread,
one at a time per partition), and publishes what they return. Keeping the
state machine free of I/O lets tests drive it directly and keeps every
ordering rule in one place.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
from typing import Any

import numpy as np

from mpnn_async.model import kernels
from mpnn_async.model.optim import OptimizerSpec
from mpnn_async.model.spec import NetworkSpec
from mpnn_async.runtime.gather import Gather, OrderedAccumulator
from mpnn_async.runtime.protocol import Rejection, attempt_floor
from mpnn_async.runtime.state_file import OptimizerStateFile, apply_named_update
from mpnn_async.wire import SCHEDULER, BlockHeader, MessageKind

__all__ = ["Admission", "GatherKey", "PartitionJob", "Send", "ComputeResult", "SCHEDULER"]

log = logging.getLogger(__name__)

# Completed inference gathers remembered for duplicate detection.
_INFERENCE_WINDOW = 4096


# (kind of the blocks, step, micro-batch, layer of the blocks)
GatherKey = tuple[MessageKind, int, int, int]


class Admission(enum.Enum):
    """Decision on an incoming block, taken before it touches any state."""

    # New and valid: add it to its gather.
    ACCEPT = "accept"
    # Its message id was seen before (a redelivery): drop it and ack.
    DUPLICATE = "duplicate"
    # It belongs to an older attempt or an applied step: drop it and ack.
    SUPERSEDED = "superseded"


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """A block to publish to another partition or to the scheduler."""

    destination: str
    kind: MessageKind
    layer: int
    step: int
    micro_batch: int
    attempt: int
    array: np.ndarray
    # Worker of each plan partition for this micro-batch (plan order); empty sends by partition.
    route: tuple[str, ...] = ()
    # For a block to another replica of this partition: the worker it goes to.
    worker: str = ""


@dataclasses.dataclass(slots=True)
class ComputeResult:
    """Output of one computation: blocks to send, work that became ready, messages to ack."""

    sends: list[Send] = dataclasses.field(default_factory=list)
    ready: list[GatherKey] = dataclasses.field(default_factory=list)
    finished_deliveries: list[Any] = dataclasses.field(default_factory=list)
    # (step, micro_batch, attempt) whose layer-1 backward finished here.
    micro_batches_done: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)


class RejectedBlock(Exception):
    """A block that does not fit the plan; carries the dead-letter reason."""

    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class PartitionJob:
    """The weights, gathers and gradient accumulators of one partition in one job."""

    def __init__(
        self,
        *,
        job: str,
        plan: Any,
        partition: str,
        spec: NetworkSpec,
        optimizer: OptimizerSpec,
        parameters: dict[int, tuple[np.ndarray, np.ndarray]],
        optimizer_state: dict[str, dict[str, np.ndarray]] | OptimizerStateFile,
        step: int,
        version: int,
        model_name: str = "",
        generation: int = 0,
        replicas: tuple[str, ...] = (),
    ) -> None:
        self.job = job
        # Blocks with an attempt below the generation's first attempt belong to a run rolled back.
        self.generation = generation
        self.first_attempt = attempt_floor(generation)
        # Workers serving this partition in the job; with more than one, each keeps its
        # micro-batches' gradients apart until the step, when the replicas exchange them.
        self.replicas = tuple(replicas)
        self.model_name = model_name
        self.plan = plan
        self.partition = partition
        self.spec = spec
        self.optimizer = optimizer
        self.parameters = parameters
        self.optimizer_state = optimizer_state
        # The step whose gradients are being accumulated (= optimizer steps applied).
        self.step = step
        self.version = version
        self.layers = tuple(plan.layers_of(partition))
        self._neurons = {layer: plan.neurons(partition, layer) for layer in self.layers}
        self._gathers: dict[GatherKey, Gather] = {}
        self._saved: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        replicated = len(self.replicas) > 1
        self._accumulators = {layer: OrderedAccumulator(fold=not replicated) for layer in self.layers}
        # (step, micro_batch) -> (attempt, route) of the latest attempt seen.
        self._routes: dict[tuple[int, int], tuple[int, tuple[str, ...]]] = {}
        self._attempts: dict[tuple[MessageKind, int, int], int] = {}
        self._seen: set[tuple[Any, ...]] = set()
        # Inference gathers already computed, newest last. Serving never applies a
        # step, so inference ids cannot live in `_seen` (cleared per step); this
        # window of the latest keys catches redeliveries instead.
        self._inference_done: collections.OrderedDict[GatherKey, None] = collections.OrderedDict()
        # Deliveries of gathers dropped as superseded; the worker acks them.
        self._orphans: list[Any] = []
        self.counters = {"duplicate": 0, "superseded": 0, "forward": 0, "backward": 0}

    def __repr__(self) -> str:
        return (
            f"<PartitionJob {self.job}/{self.partition} layers={list(self.layers)} "
            f"step={self.step} version={self.version} generation={self.generation} "
            f"gathers={len(self._gathers)}>"
        )

    # -- admission -----------------------------------------------------------------------

    def admit(self, header: BlockHeader, array: np.ndarray) -> Admission:
        """Check a decoded block against the plan; raise RejectedBlock if it cannot fit."""
        if header.kind is MessageKind.REPLICA_GRADIENT:
            return self._admit_replica_gradient(header, array)
        self._check_fits_plan(header, array)
        if header.message_id() in self._seen:
            return Admission.DUPLICATE
        if header.kind is MessageKind.INFERENCE and self._gather_key(header) in self._inference_done:
            return Admission.DUPLICATE
        if header.step < self.step:
            return Admission.SUPERSEDED
        if header.step > self.step:
            raise RejectedBlock(
                Rejection.UNEXPECTED_BLOCK,
                f"block of step {header.step} while the partition is at step {self.step}",
            )
        attempt_key = (self._phase(header.kind), header.step, header.micro_batch)
        current = self._attempts.get(attempt_key, self.first_attempt)
        if header.attempt < current:
            return Admission.SUPERSEDED
        if header.attempt > current:
            self._drop_attempt(attempt_key)
            self._attempts[attempt_key] = header.attempt
        if header.kind is MessageKind.GRADIENT and (
            (header.step, header.micro_batch, header.layer) not in self._saved
        ):
            if self._accumulators[header.layer].has(header.micro_batch):
                return Admission.SUPERSEDED
            raise RejectedBlock(
                Rejection.UNEXPECTED_BLOCK,
                f"gradient for layer {header.layer} of micro-batch {header.micro_batch} "
                "arrived before its forward pass ran here",
            )
        return Admission.ACCEPT

    def _check_fits_plan(self, header: BlockHeader, array: np.ndarray) -> None:
        depth = self.spec.depth
        if header.destination != self.partition:
            self._reject(f"destination {header.destination!r} is not {self.partition!r}")
        if array.dtype != self.spec.np_dtype or array.ndim != 2 or array.shape[0] < 1:
            self._reject(f"expected a 2-d {self.spec.dtype} block, got {array.dtype} {array.shape}")
        if header.kind is MessageKind.GRADIENT:
            layer = header.layer
            if layer not in self._neurons:
                self._reject(f"gradient for layer {layer}, which this partition does not own")
            sources = self._sources(MessageKind.GRADIENT, layer)
            columns = len(self._neurons[layer])
        else:
            layer = header.layer + 1
            if not 1 <= layer <= depth or layer not in self._neurons:
                self._reject(f"activation of layer {header.layer} is not an input of this partition")
            sources = self._sources(header.kind, header.layer)
            columns = self._source_columns(header.source, header.layer)
        if header.source not in sources or header.source == self.partition:
            self._reject(f"source {header.source!r} does not send layer {header.layer} here")
        if array.shape[1] != columns:
            self._reject(f"block from {header.source!r} has {array.shape[1]} columns, expected {columns}")
        if not np.isfinite(array).all():
            raise RejectedBlock(Rejection.NON_FINITE, "block contains NaN or infinity")

    @staticmethod
    def _reject(detail: str) -> None:
        raise RejectedBlock(Rejection.UNEXPECTED_BLOCK, detail)

    # -- gathering -----------------------------------------------------------------------

    def add(self, header: BlockHeader, array: np.ndarray, delivery: Any) -> GatherKey | None:
        """Add an admitted block; return its gather key when the gather is complete."""
        if header.kind is not MessageKind.INFERENCE:
            self._seen.add(header.message_id())
        if header.kind is MessageKind.REPLICA_GRADIENT:
            self._add_replica_gradient(header, array)
            return None
        self._record_route(header)
        key = self._gather_key(header)
        gather = self._gather(key)
        if gather.rows is not None and gather.rows != array.shape[0]:
            raise RejectedBlock(
                Rejection.UNEXPECTED_BLOCK,
                f"block has {array.shape[0]} rows, the micro-batch has {gather.rows}",
            )
        gather.add(header.source, array, delivery)
        return key if gather.is_complete else None

    def _record_route(self, header: BlockHeader) -> None:
        route = header.extra.get("route")
        if not isinstance(route, tuple):
            return
        if len(route) != len(self.plan.partitions) or not all(isinstance(w, str) for w in route):
            raise RejectedBlock(
                Rejection.UNEXPECTED_BLOCK,
                f"route {list(route)!r} does not name one worker per partition {list(self.plan.partitions)}",
            )
        key = (header.step, header.micro_batch)
        known = self._routes.get(key)
        if known is None or known[0] <= header.attempt:
            self._routes[key] = (header.attempt, tuple(str(worker) for worker in route))

    def _route_of(self, step: int, micro_batch: int) -> tuple[str, ...]:
        known = self._routes.get((step, micro_batch))
        return known[1] if known is not None else ()

    @staticmethod
    def _gather_key(header: BlockHeader) -> GatherKey:
        return (header.kind, header.step, header.micro_batch, header.layer)

    def _gather(self, key: GatherKey) -> Gather:
        gather = self._gathers.get(key)
        if gather is None:
            kind, _, _, layer = key
            gather = Gather(expected=self._sources(kind, layer))
            self._gathers[key] = gather
        return gather

    def _sources(self, kind: MessageKind, layer: int) -> tuple[str, ...]:
        """Senders of blocks of `layer` to this partition, in the plan's partition order."""
        if kind is MessageKind.GRADIENT:
            if layer == self.spec.depth:
                return (SCHEDULER,)
            return tuple(self.plan.owners(layer + 1))
        if layer == 0:
            return (SCHEDULER,)
        return tuple(self.plan.owners(layer))

    def _source_columns(self, source: str, layer: int) -> int:
        if layer == 0:
            return self.spec.input_width
        if source not in self.plan.partitions:
            return -1
        return len(self.plan.neurons(source, layer))

    def _feed_local(self, key: GatherKey, array: np.ndarray, result: ComputeResult) -> None:
        gather = self._gather(key)
        gather.add(self.partition, array)
        if gather.is_complete:
            result.ready.append(key)

    # -- computation ---------------------------------------------------------------------

    def compute(self, key: GatherKey) -> ComputeResult:
        """Run the forward or backward pass that the complete gather `key` was waiting for."""
        gather = self._gathers.pop(key)
        result = ComputeResult(finished_deliveries=gather.deliveries)
        kind, step, micro_batch, layer = key
        attempt = self._attempts.get((self._phase(kind), step, micro_batch), self.first_attempt)
        if kind is MessageKind.GRADIENT:
            self._backward(gather, step, micro_batch, layer, attempt, result)
        else:
            if kind is MessageKind.INFERENCE:
                self._inference_done[key] = None
                while len(self._inference_done) > _INFERENCE_WINDOW:
                    self._inference_done.popitem(last=False)
            self._forward(gather, kind, step, micro_batch, layer + 1, attempt, result)
        return result

    def _forward(
        self,
        gather: Gather,
        kind: MessageKind,
        step: int,
        micro_batch: int,
        layer: int,
        attempt: int,
        result: ComputeResult,
    ) -> None:
        inputs = self._assemble_inputs(gather, layer - 1)
        weights, biases = self.parameters[layer]
        z, activation = kernels.forward(weights, biases, inputs, self.spec.activation(layer))
        self.counters["forward"] += 1
        if kind is MessageKind.ACTIVATION:
            self._saved[(step, micro_batch, layer)] = (inputs, z)
        for target in self._forward_targets(layer):
            if target == self.partition:
                self._feed_local((kind, step, micro_batch, layer), activation, result)
            else:
                result.sends.append(
                    Send(target, kind, layer, step, micro_batch, attempt, activation, self._route_of(step, micro_batch))
                )

    def _forward_targets(self, layer: int) -> tuple[str, ...]:
        if layer == self.spec.depth:
            return (SCHEDULER,)
        return tuple(self.plan.owners(layer + 1))

    def _assemble_inputs(self, gather: Gather, layer: int) -> np.ndarray:
        blocks = gather.blocks
        if len(blocks) == 1:
            # One sender owns all of layer `layer` (or it is the data): use its block as is.
            return next(iter(blocks.values()))
        inputs = np.empty((gather.rows or 0, self.spec.width(layer)), dtype=self.spec.np_dtype)
        for source, block in blocks.items():
            inputs[:, self.plan.neurons(source, layer)] = block
        return inputs

    def _backward(
        self,
        gather: Gather,
        step: int,
        micro_batch: int,
        layer: int,
        attempt: int,
        result: ComputeResult,
    ) -> None:
        # NOTE: partials are summed in the plan's partition order, never arrival
        # order, so the result does not depend on message timing.
        partials = gather.ordered()
        output_gradient = partials[0].copy() if len(partials) > 1 else partials[0]
        for partial in partials[1:]:
            output_gradient += partial
        inputs, z = self._saved.pop((step, micro_batch, layer))
        delta = kernels.delta_from_output_gradient(output_gradient, z, self.spec.activation(layer))
        weights, _ = self.parameters[layer]
        weight_gradient, bias_gradient, input_gradient = kernels.backward_factored(
            weights, delta, inputs, need_input_gradient=layer > 1
        )
        self.counters["backward"] += 1
        accumulator = self._accumulators[layer]
        if not accumulator.has(micro_batch):
            accumulator.add(micro_batch, [weight_gradient, bias_gradient])
        if layer == 1:
            result.micro_batches_done.append((step, micro_batch, attempt))
            return
        assert input_gradient is not None
        for owner in self.plan.owners(layer - 1):
            columns = input_gradient[:, self.plan.neurons(owner, layer - 1)]
            if owner == self.partition:
                self._feed_local((MessageKind.GRADIENT, step, micro_batch, layer - 1), columns, result)
            else:
                result.sends.append(
                    Send(
                        owner,
                        MessageKind.GRADIENT,
                        layer - 1,
                        step,
                        micro_batch,
                        attempt,
                        columns,
                        self._route_of(step, micro_batch),
                    )
                )

    # -- replicas ------------------------------------------------------------------------

    def _admit_replica_gradient(self, header: BlockHeader, array: np.ndarray) -> Admission:
        layer = header.layer
        if header.source != self.partition or header.destination != self.partition:
            self._reject(f"replica gradient from {header.source!r} to {header.destination!r}; both must be {self.partition!r}")
        if layer not in self._neurons:
            self._reject(f"replica gradient for layer {layer}, which this partition does not own")
        expected = (len(self._neurons[layer]), self.spec.width(layer - 1) + 1)
        if array.dtype != self.spec.np_dtype or array.shape != expected:
            self._reject(f"replica gradient of layer {layer} is {array.dtype} {array.shape}, expected {expected}")
        if not np.isfinite(array).all():
            raise RejectedBlock(Rejection.NON_FINITE, "block contains NaN or infinity")
        if header.message_id() in self._seen:
            return Admission.DUPLICATE
        if header.step < self.step or header.attempt < self.first_attempt:
            return Admission.SUPERSEDED
        if header.step > self.step:
            self._reject(f"replica gradient of step {header.step} while the partition is at step {self.step}")
        if self._accumulators[layer].has(header.micro_batch):
            # This replica computed the micro-batch itself (a straggler's late result): same numbers.
            return Admission.SUPERSEDED
        return Admission.ACCEPT

    def _add_replica_gradient(self, header: BlockHeader, array: np.ndarray) -> None:
        weight_gradient = np.ascontiguousarray(array[:, :-1])
        bias_gradient = np.ascontiguousarray(array[:, -1])
        self._accumulators[header.layer].add(header.micro_batch, [weight_gradient, bias_gradient])

    def replica_sends(self, step: int, holders: list[str], worker: str, replicas: list[str]) -> list[Send]:
        """Return this replica's gradients of the micro-batches it holds, for every other replica."""
        others = [replica for replica in replicas if replica != worker]
        sends = []
        for micro_batch, holder in enumerate(holders):
            if holder != worker:
                continue
            for layer in self.layers:
                weight_gradient, bias_gradient = self._accumulators[layer].gradients_of(micro_batch)
                packed = np.concatenate([weight_gradient, bias_gradient[:, None]], axis=1)
                for other in others:
                    sends.append(
                        Send(self.partition, MessageKind.REPLICA_GRADIENT, layer, step, micro_batch,
                             self.first_attempt, packed, worker=other)
                    )
        return sends

    def missing_micro_batches(self, micro_batches: int) -> list[int]:
        """Return the micro-batches of the current step whose gradients this replica lacks."""
        return [
            micro_batch
            for micro_batch in range(micro_batches)
            if not all(accumulator.has(micro_batch) for accumulator in self._accumulators.values())
        ]

    # -- steps ---------------------------------------------------------------------------

    def apply_step(self, step: int, micro_batches: int) -> None:
        """Apply the optimizer to the gradients of `micro_batches` micro-batches of `step`."""
        if step != self.step:
            raise ValueError(f"step.apply for step {step}, but the partition is at step {self.step}")
        for layer in self.layers:
            weight_gradient, bias_gradient = self._accumulators[layer].take(micro_batches)
            weights, biases = self.parameters[layer]
            state = self.optimizer_state
            apply_named_update(self.optimizer, state, f"W{layer}", weights, weight_gradient, step + 1)
            apply_named_update(self.optimizer, state, f"b{layer}", biases, bias_gradient, step + 1)
        self.step = step + 1
        self._forget_before(self.step)

    def _forget_before(self, step: int) -> None:
        self._seen = {message_id for message_id in self._seen if message_id[1] >= step}
        self._attempts = {key: value for key, value in self._attempts.items() if key[1] >= step}
        self._routes = {key: value for key, value in self._routes.items() if key[0] >= step}
        self._saved = {key: value for key, value in self._saved.items() if key[0] >= step}
        for key in [key for key in self._gathers if key[1] < step]:
            self._orphans.extend(self._gathers.pop(key).deliveries)

    def _drop_attempt(self, attempt_key: tuple[MessageKind, int, int]) -> None:
        phase, step, micro_batch = attempt_key
        for key in [
            key
            for key in self._gathers
            if self._phase(key[0]) == phase and key[1] == step and key[2] == micro_batch
        ]:
            self._orphans.extend(self._gathers.pop(key).deliveries)
        if phase is MessageKind.ACTIVATION:
            for saved_key in [k for k in self._saved if k[0] == step and k[1] == micro_batch]:
                del self._saved[saved_key]

    @staticmethod
    def _phase(kind: MessageKind) -> MessageKind:
        # A training micro-batch's forward and backward blocks share one attempt counter.
        return MessageKind.ACTIVATION if kind is MessageKind.GRADIENT else kind

    def max_held_blocks(self, in_flight: int) -> int:
        """Return the most blocks this partition may hold unacknowledged at once.

        Each micro-batch in flight leaves at most one block per remote sender
        waiting in each of its gathers. One more micro-batch is counted because
        a finished micro-batch's blocks are acknowledged just after its
        successor may already have started.
        """
        per_micro_batch = 0
        for layer in self.layers:
            for kind, block_layer in ((MessageKind.ACTIVATION, layer - 1), (MessageKind.GRADIENT, layer)):
                per_micro_batch += sum(
                    1 for source in self._sources(kind, block_layer) if source != self.partition
                )
        return (in_flight + 1) * per_micro_batch

    def take_orphans(self) -> list[Any]:
        """Return and forget the deliveries of gathers dropped as superseded."""
        orphans, self._orphans = self._orphans, []
        return orphans

    def pending_deliveries(self) -> list[Any]:
        """Deliveries held in incomplete gathers (to requeue on shutdown)."""
        return [delivery for gather in self._gathers.values() for delivery in gather.deliveries]
