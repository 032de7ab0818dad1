"""Optimizers as element-wise updates, so a partition can update its rows alone.

Every rule here is element-wise in the parameters, so applying it to rows S
of W gives exactly the rows S that the whole-matrix update would give. That is
what lets each partition run its optimizer independently and still match the
single-process reference.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping, MutableMapping

import numpy as np

from mpnn_async.errors import ConfigError

__all__ = ["OptimizerKind", "OptimizerSpec", "apply_update"]


class OptimizerKind(enum.StrEnum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"


@dataclasses.dataclass(frozen=True, slots=True)
class OptimizerSpec:
    """Optimizer settings, with PyTorch's defaults and formulas.

    - `sgd`: p -= lr * g.
    - `momentum`: buf = momentum * buf + g (buf = g on the first step); p -= lr * buf.
    - `adam`: m and v are exponential averages of g and g**2;
      p -= lr * m_hat / (sqrt(v_hat) + eps), where m_hat and v_hat are the
      bias-corrected averages. As in torch.optim.Adam, eps is added after the
      bias correction of v.
    Weight decay is L2 added to the gradient (g += weight_decay * p) before the
    rule runs, for weights and biases alike, as torch.optim does.
    """

    kind: OptimizerKind = OptimizerKind.SGD
    learning_rate: float = 0.01
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        try:
            # A plain string such as "sgd" becomes the enum member, so that the
            # `is` checks in apply_update pick the right rule.
            object.__setattr__(self, "kind", OptimizerKind(self.kind))
        except ValueError:
            raise ConfigError(
                "optimizer.kind",
                f"unknown optimizer {self.kind!r}",
                fix="use sgd, momentum or adam",
            ) from None
        for name in ("learning_rate", "eps"):
            value = getattr(self, name)
            if not (_is_real(value) and np.isfinite(value) and value > 0):
                raise ConfigError(f"optimizer.{name}", f"must be a positive number, got {value!r}")
        for name in ("momentum", "beta1", "beta2"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 <= value < 1):
                raise ConfigError(f"optimizer.{name}", f"must be in [0, 1), got {value!r}")
        decay = self.weight_decay
        if not (_is_real(decay) and np.isfinite(decay) and decay >= 0):
            raise ConfigError(
                "optimizer.weight_decay", f"must be a finite number >= 0, got {decay!r}"
            )

    def state_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays this optimizer keeps."""
        if self.kind is OptimizerKind.MOMENTUM:
            return ("momentum_buffer",)
        if self.kind is OptimizerKind.ADAM:
            return ("exp_avg", "exp_avg_sq")
        return ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["kind"] = str(self.kind)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, field: str = "optimizer") -> OptimizerSpec:
        if not isinstance(data, Mapping):
            raise ConfigError(field, "must be a table")
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"{field}.{key}", "unknown key", fix=f"expected one of {sorted(names)}"
                )
        values = dict(data)
        if "kind" in values:
            try:
                values["kind"] = OptimizerKind(values["kind"])
            except ValueError:
                raise ConfigError(
                    f"{field}.kind",
                    f"unknown optimizer {values['kind']!r}",
                    fix="use sgd, momentum or adam",
                ) from None
        return cls(**values)


def _is_real(value: Any) -> bool:
    """Return True for an int or float. A bool is rejected although Python treats it as an int."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def apply_update(
    spec: OptimizerSpec,
    parameter: np.ndarray,
    gradient: np.ndarray,
    state: MutableMapping[str, np.ndarray],
    step: int,
) -> None:
    """Update `parameter` in place from `gradient`; `step` counts from 1.

    `state` holds this parameter's optimizer arrays by name and is filled with
    zeros on first use; it is updated in place.
    """
    if step < 1:
        raise ValueError(f"optimizer step counts from 1, got {step}")
    dtype = parameter.dtype
    lr = dtype.type(spec.learning_rate)
    grad = gradient
    if spec.weight_decay:
        grad = grad + dtype.type(spec.weight_decay) * parameter

    if spec.kind is OptimizerKind.SGD:
        parameter -= lr * grad
        return

    if spec.kind is OptimizerKind.MOMENTUM:
        buffer = state.get("momentum_buffer")
        if buffer is None or step == 1:
            buffer = np.array(grad, dtype=dtype, copy=True)
        else:
            buffer *= dtype.type(spec.momentum)
            buffer += grad
        state["momentum_buffer"] = buffer
        parameter -= lr * buffer
        return

    if spec.kind is not OptimizerKind.ADAM:
        raise AssertionError(f"no update rule for {spec.kind!r}")
    # Created only on first use: setdefault would allocate a parameter-sized array every step.
    if "exp_avg" not in state:
        state["exp_avg"] = np.zeros_like(parameter)
        state["exp_avg_sq"] = np.zeros_like(parameter)
    exp_avg = state["exp_avg"]
    exp_avg_sq = state["exp_avg_sq"]
    beta1 = dtype.type(spec.beta1)
    beta2 = dtype.type(spec.beta2)
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad
    bias_correction1 = 1 - spec.beta1**step
    bias_correction2 = 1 - spec.beta2**step
    denominator = np.sqrt(exp_avg_sq) / dtype.type(np.sqrt(bias_correction2))
    denominator += dtype.type(spec.eps)
    parameter -= dtype.type(spec.learning_rate / bias_correction1) * (exp_avg / denominator)
