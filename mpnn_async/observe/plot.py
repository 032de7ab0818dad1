"""Draw a job's progress history as a PNG: loss and test accuracy per step.

Needs matplotlib (the `plot` extra), and Pillow, which matplotlib requires.
The figure is drawn on matplotlib's Agg canvas without pyplot, so no window,
display or global backend is involved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["plot_history"]

# Width and height in inches at 100 dpi: an 800 x 600 pixel PNG of about 40 KB.
_FIGURE_SIZE_IN = (8.0, 6.0)
_DPI = 100
# The smoothed train loss averages this share of the step rows.
_SMOOTHING_SHARE = 0.02


def plot_history(columns: Mapping[str, np.ndarray], *, job: str, path: str | os.PathLike[str]) -> None:
    """Write a PNG of the train loss per step, the test loss and the test accuracy per evaluation.

    `columns` is a history as `read_history` returns it. Raises OSError when
    the file cannot be written.
    """
    is_evaluation = columns["evaluation"].astype(bool)
    steps = columns["step"][~is_evaluation]
    train_loss = columns["loss"][~is_evaluation]
    evaluation_steps = columns["step"][is_evaluation]
    test_loss = columns["test_loss"][is_evaluation]
    accuracy = columns["accuracy"][is_evaluation]

    figure = Figure(figsize=_FIGURE_SIZE_IN, dpi=_DPI, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))

    loss_axes.plot(steps, train_loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="train loss (step)")
    if len(steps) > 1:
        loss_axes.plot(steps, _moving_average(train_loss), color="tab:blue", linewidth=1.6,
                       label="train loss (moving average)")
    loss_axes.plot(evaluation_steps, test_loss, "o-", color="tab:orange", markersize=4, label="test loss")
    if _spans_decades(np.concatenate([train_loss, test_loss])):
        loss_axes.set_yscale("log")
    loss_axes.set_ylabel("loss")
    loss_axes.grid(True, which="major", alpha=0.3)
    loss_axes.legend(loc="upper right", fontsize="small")

    accuracy_axes.plot(evaluation_steps, accuracy, "o-", color="tab:green", markersize=4)
    accuracy_axes.set_ylabel("test accuracy")
    accuracy_axes.set_xlabel("step")
    accuracy_axes.grid(True, alpha=0.3)
    final_accuracy = accuracy[np.isfinite(accuracy)]
    if len(final_accuracy):
        accuracy_axes.annotate(
            f"{final_accuracy[-1]:.4f}",
            (evaluation_steps[np.isfinite(accuracy)][-1], final_accuracy[-1]),
            textcoords="offset points", xytext=(-8, -14), ha="right", fontsize="small",
        )
    else:
        accuracy_axes.text(0.5, 0.5, "no evaluation with a test accuracy yet", ha="center",
                           va="center", transform=accuracy_axes.transAxes)

    last_step = int(columns["step"].max()) if len(columns["step"]) else 0
    figure.suptitle(f"job {job}: loss and test accuracy, {last_step} steps")
    _save_png(canvas, path)


def _save_png(canvas: FigureCanvasAgg, path: str | os.PathLike[str]) -> None:
    # A plot has a handful of colours, so a 256-colour palette looks the same as RGBA
    # at about 40% of the size.
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = canvas.buffer_rgba()  # type: ignore[no-untyped-call]
    image = Image.frombuffer("RGBA", canvas.get_width_height(), rgba, "raw", "RGBA", 0, 1)
    image.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)


def _moving_average(values: np.ndarray) -> np.ndarray:
    """Return the mean of the last `window` values at each position (fewer at the start), NaN skipped."""
    window = max(1, int(len(values) * _SMOOTHING_SHARE))
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite)
    start_sums = np.concatenate([np.zeros(window), sums[:-window]])
    start_counts = np.concatenate([np.zeros(window), counts[:-window]])
    window_counts = counts - start_counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(window_counts > 0, (sums - start_sums) / window_counts, np.nan)


def _spans_decades(values: np.ndarray) -> bool:
    """Return whether the finite values are all positive and span more than a factor of 20, where a log axis reads better."""
    positive = values[np.isfinite(values) & (values > 0)]
    if len(positive) == 0 or len(positive) != np.count_nonzero(np.isfinite(values)):
        return False
    return bool(positive.max() / positive.min() > 20)
