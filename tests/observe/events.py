"""Progress events of a short made-up job, as the scheduler would send them."""

from __future__ import annotations

from mpnn_async.runtime.progress import ProgressEvent

JOB = "demo"
TOTAL_STEPS = 8
STEPS_PER_EPOCH = 4
# Seconds between two steps, in the scheduler's time_s stamps.
STEP_S = 3.0
START_S = 1_000.0


def step_event(step: int, *, loss: float = 1.0, samples_per_s: float = 100.0) -> ProgressEvent:
    return ProgressEvent(
        job=JOB,
        epoch=(step - 1) // STEPS_PER_EPOCH,
        step=step,
        loss=loss,
        total_steps=TOTAL_STEPS,
        samples_per_s=samples_per_s,
        time_s=START_S + STEP_S * step,
    )


def evaluation_event(step: int, *, loss: float, test_loss: float, accuracy: float, state: str = "running") -> ProgressEvent:
    return ProgressEvent(
        job=JOB,
        epoch=(step - 1) // STEPS_PER_EPOCH,
        step=step,
        loss=loss,
        total_steps=TOTAL_STEPS,
        test_loss=test_loss,
        accuracy=accuracy,
        state=state,
        time_s=START_S + STEP_S * step + 0.5,
    )


def job_events() -> list[ProgressEvent]:
    """Eight steps in two epochs, an evaluation after each epoch, then the final event."""
    events: list[ProgressEvent] = []
    for step in range(1, TOTAL_STEPS + 1):
        events.append(step_event(step, loss=2.0 / step, samples_per_s=100.0 * step))
        if step % STEPS_PER_EPOCH == 0:
            events.append(evaluation_event(step, loss=1.0 / step, test_loss=1.5 / step, accuracy=0.5 + step / 20))
    last = events[-1]
    events.append(evaluation_event(
        last.step, loss=last.loss, test_loss=last.test_loss or 0.0, accuracy=last.accuracy or 0.0, state="finished"
    ))
    return events
