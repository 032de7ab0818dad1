"""The progress display: plain key=value lines from a list of events, and the rich bar on a terminal."""

from __future__ import annotations

import io
import os
import pty
import re

from rich.console import Console

from mpnn_async.observe.display import PlainProgressDisplay, RichProgressDisplay, open_display
from mpnn_async.observe.tracker import ProgressTracker
from tests.observe.events import job_events, step_event

PLAIN_LINE = re.compile(r"job\.(progress|evaluated|finished)( [a-z_]+=\S+)+")


def test_plain_lines_from_events():
    stream = io.StringIO()

    with PlainProgressDisplay(stream=stream, interval_s=5.0) as display:
        for event in job_events():
            display.show(event)

    assert stream.getvalue().splitlines() == [
        "job.progress job=demo epoch=1 step=1/8 loss=2.0000 samples_per_s=100 eta_s=n/a",
        "job.progress job=demo epoch=1 step=3/8 loss=0.6667 samples_per_s=156 eta_s=15",
        "job.evaluated job=demo epoch=1 step=4/8 train_loss=0.2500 test_loss=0.3750 accuracy=0.7000",
        "job.progress job=demo epoch=2 step=6/8 loss=0.3333 samples_per_s=331 eta_s=6",
        "job.progress job=demo epoch=2 step=8/8 loss=0.2500 samples_per_s=484 eta_s=0",
        "job.evaluated job=demo epoch=2 step=8/8 train_loss=0.1250 test_loss=0.1875 accuracy=0.9000",
        "job.finished job=demo epoch=2 step=8/8 train_loss=0.1250 test_loss=0.1875 accuracy=0.9000",
    ]


def test_plain_lines_are_key_value():
    stream = io.StringIO()
    display = PlainProgressDisplay(stream=stream, interval_s=1.0)

    for event in job_events():
        display.show(event)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # every step (3 s apart), both evaluations, the final event
    for line in lines:
        assert PLAIN_LINE.fullmatch(line), line


def test_plain_interval_counts_job_time():
    stream = io.StringIO()
    display = PlainProgressDisplay(stream=stream, interval_s=60.0)

    for event in job_events():
        if event.accuracy is None:
            display.show(event)

    assert stream.getvalue().count("job.progress") == 1


def test_tracker_eta_and_throughput():
    tracker = ProgressTracker()

    tracker.update(step_event(1, samples_per_s=100.0))
    assert tracker.eta_s is None
    tracker.update(step_event(3, samples_per_s=200.0))

    assert tracker.steps_per_s == 1 / 3
    assert tracker.eta_s == 15.0
    assert tracker.samples_per_s == 120.0
    assert not tracker.is_finished


def test_rich_display_draws_bar_and_results():
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, color_system=None, width=120)

    with RichProgressDisplay(console=console) as display:
        for event in job_events():
            display.show(event)

    text = output.getvalue()
    assert "demo epoch 2" in text
    assert "8/8" in text
    assert "acc 0.9000" in text
    assert "samples/s" in text
    assert "demo evaluated: epoch 1, step 4/8" in text
    assert "demo finished: epoch 2, step 8/8, train loss 0.1250, test loss 0.1875, test accuracy 0.9000" in text


def test_open_display_plain_unless_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    primary, secondary = pty.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            assert isinstance(open_display(stream=terminal), RichProgressDisplay)
            assert isinstance(open_display(stream=terminal, plain=True), PlainProgressDisplay)
            monkeypatch.setenv("TERM", "dumb")
            assert isinstance(open_display(stream=terminal), PlainProgressDisplay)
    finally:
        os.close(primary)
        os.close(secondary)

    assert isinstance(open_display(stream=io.StringIO()), PlainProgressDisplay)
