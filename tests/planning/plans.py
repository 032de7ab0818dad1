"""Small builders shared by the planning tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpnn_async.model.activations import Activation
from mpnn_async.model.spec import LayerSpec, NetworkSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"


def make_spec(*widths: int, dtype: str = "float64", seed: int = 0) -> NetworkSpec:
    """Return an MLP spec with the given input and layer widths, relu except the last."""
    layers = tuple(
        LayerSpec(
            width=width,
            activation=Activation.IDENTITY if index == len(widths) - 2 else Activation.RELU,
        )
        for index, width in enumerate(widths[1:])
    )
    return NetworkSpec(input_width=widths[0], layers=layers, dtype=dtype, seed=seed)


def plan_table(
    partitions: list[str], *rules: dict[str, Any], default: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Return a raw `[plan]` table as tomllib would parse it."""
    table: dict[str, Any] = {"partitions": partitions, "layers": list(rules)}
    if default is not None:
        table["default"] = default
    return table
