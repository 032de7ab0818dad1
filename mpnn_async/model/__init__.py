"""The network: spec, activations, losses, kernels, optimizers and the reference trainer."""

from mpnn_async.model.activations import Activation
from mpnn_async.model.losses import Loss
from mpnn_async.model.optim import OptimizerKind, OptimizerSpec
from mpnn_async.model.reference import ReferenceTrainer
from mpnn_async.model.spec import LayerSpec, NetworkSpec, NeuronId

__all__ = [
    "Activation",
    "LayerSpec",
    "Loss",
    "NetworkSpec",
    "NeuronId",
    "OptimizerKind",
    "OptimizerSpec",
    "ReferenceTrainer",
]
