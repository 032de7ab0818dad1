"""Optimizers as element-wise updates, so a partition can update its rows alone.

Every rule here is element-wise in the parameters, so applying it to rows S
of W gives exactly the rows S that the whole-matrix update would give. That is
what lets each partition run its optimizer independently and still match the
single-process reference.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Iterator, Mapping, MutableMapping

import numpy as np

from mpnn_async.errors import ConfigError

__all__ = [
    "UPDATE_CHUNK_BYTES",
    "OptimizerKind",
    "OptimizerSpec",
    "apply_update",
    "check_step",
    "new_scratch",
    "row_chunks",
    "update_rows",
]

# Bytes of parameter rows updated together: small enough that the update's
# temporaries stay in the CPU cache, large enough that the per-chunk Python
# overhead (about 15 NumPy calls) is negligible.
UPDATE_CHUNK_BYTES = 1 << 20


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

    `state` holds this parameter's optimizer arrays by name and is filled on
    first use (zeros for Adam, the gradient for momentum); it is updated in
    place. The update runs over row chunks of about UPDATE_CHUNK_BYTES, so its
    temporary arrays take two chunks rather than several parameter-sized arrays.
    A gradient of another dtype is first converted to the parameter's.
    """
    check_step(step)
    gradient = _matching_gradient(parameter, gradient)
    first_use = False
    if spec.kind is OptimizerKind.MOMENTUM:
        # As torch.optim.SGD: the buffer starts as the gradient on the first step.
        first_use = "momentum_buffer" not in state or step == 1
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = np.empty_like(parameter)
    elif spec.kind is OptimizerKind.ADAM and "exp_avg" not in state:
        state["exp_avg"] = np.zeros_like(parameter)
        state["exp_avg_sq"] = np.zeros_like(parameter)

    rows, gradient_rows = np.atleast_1d(parameter), np.atleast_1d(gradient)
    state_rows = {name: np.atleast_1d(state[name]) for name in spec.state_names()}
    scratch = new_scratch(rows)
    for chunk in row_chunks(rows):
        update_rows(
            spec,
            rows[chunk],
            gradient_rows[chunk],
            {name: array[chunk] for name, array in state_rows.items()},
            step,
            first_use=first_use,
            scratch=scratch,
        )


def check_step(step: int) -> None:
    """Raise ValueError unless `step` is a valid optimizer step number (from 1)."""
    if step < 1:
        raise ValueError(f"optimizer step counts from 1, got {step}")


def _matching_gradient(parameter: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    gradient = np.asarray(gradient)
    if gradient.shape != parameter.shape:
        raise ValueError(
            f"gradient shape {gradient.shape} does not match the parameter's {parameter.shape}"
        )
    return gradient.astype(parameter.dtype, copy=False)


def row_chunks(array: np.ndarray, chunk_bytes: int = UPDATE_CHUNK_BYTES) -> Iterator[slice]:
    """Yield slices of the first axis of `array` (at least 1-d) covering about `chunk_bytes` each."""
    rows = array.shape[0]
    step = chunk_rows(array, chunk_bytes)
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def chunk_rows(array: np.ndarray, chunk_bytes: int = UPDATE_CHUNK_BYTES) -> int:
    """Return how many rows of `array` (at least 1-d) make a chunk of about `chunk_bytes`."""
    row_bytes = max(1, array[:1].nbytes if array.shape[0] else array.itemsize)
    return max(1, chunk_bytes // row_bytes)


def new_scratch(array: np.ndarray, chunk_bytes: int = UPDATE_CHUNK_BYTES) -> np.ndarray:
    """Return temporary space for `update_rows` on chunks of `array`: two chunk-sized arrays."""
    rows = min(array.shape[0], chunk_rows(array, chunk_bytes))
    return np.empty((2, rows, *array.shape[1:]), dtype=array.dtype)


def update_rows(
    spec: OptimizerSpec,
    parameter: np.ndarray,
    gradient: np.ndarray,
    state: Mapping[str, np.ndarray],
    step: int,
    *,
    first_use: bool,
    scratch: np.ndarray,
) -> None:
    """Apply one step of `spec` in place to some rows of a parameter and of its state.

    `parameter`, `gradient` and each array of `state` (all of `spec.state_names()`)
    have the same shape and dtype; `scratch` comes from `new_scratch` and has at
    least as many rows. Adam's state must be zeros before its first step. For
    momentum, `first_use` sets the buffer to the gradient instead of updating it.
    The operations are those of PyTorch's single-tensor SGD and Adam, in the
    same order, written with `out=` so that no parameter-sized array is allocated.
    """
    rows = parameter.shape[0]
    effective, temporary = scratch[0, :rows], scratch[1, :rows]
    dtype = parameter.dtype
    grad = gradient
    if spec.weight_decay:
        # g + weight_decay * p: L2 decay added to the gradient, as torch.optim does.
        np.multiply(parameter, dtype.type(spec.weight_decay), out=effective)
        effective += gradient
        grad = effective

    lr = dtype.type(spec.learning_rate)
    if spec.kind is OptimizerKind.SGD:
        np.multiply(grad, lr, out=temporary)
        parameter -= temporary
        return

    if spec.kind is OptimizerKind.MOMENTUM:
        buffer = state["momentum_buffer"]
        if first_use:
            buffer[...] = grad
        else:
            buffer *= dtype.type(spec.momentum)
            buffer += grad
        np.multiply(buffer, lr, out=temporary)
        parameter -= temporary
        return

    if spec.kind is not OptimizerKind.ADAM:
        raise AssertionError(f"no update rule for {spec.kind!r}")
    exp_avg = state["exp_avg"]
    exp_avg_sq = state["exp_avg_sq"]
    beta1 = dtype.type(spec.beta1)
    beta2 = dtype.type(spec.beta2)
    # m = beta1 * m + (1 - beta1) * g
    exp_avg *= beta1
    np.multiply(grad, 1 - beta1, out=temporary)
    exp_avg += temporary
    # v = beta2 * v + (1 - beta2) * g * g
    exp_avg_sq *= beta2
    np.multiply(grad, 1 - beta2, out=temporary)
    temporary *= grad
    exp_avg_sq += temporary
    # p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    bias_correction1 = 1 - spec.beta1**step
    bias_correction2 = 1 - spec.beta2**step
    denominator = np.sqrt(exp_avg_sq, out=temporary)
    denominator /= dtype.type(np.sqrt(bias_correction2))
    denominator += dtype.type(spec.eps)
    ratio = np.divide(exp_avg, denominator, out=temporary)
    ratio *= dtype.type(spec.learning_rate / bias_correction1)
    parameter -= ratio
