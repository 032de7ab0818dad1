"""`mpnn train`, `mpnn watch --store` and `mpnn plot` on a short real job, run as a user runs them."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from PIL import Image

from tests.observe.jobs import SHORT_JOB_STEPS, mpnn, short_digits_config

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store holding the finished short digits job, and the output of `mpnn train` that made it."""
    directory = tmp_path_factory.mktemp("trained")
    store = directory / "store"
    completed = mpnn("train", str(short_digits_config(directory)), "--store", str(store), "--json")
    assert completed.returncode == 0, completed.stderr[-3000:]
    return store, completed


def test_train_progress_on_stderr_json_last(trained):
    _, completed = trained

    result = json.loads(completed.stdout.splitlines()[-1])
    assert completed.stdout.endswith("\n")
    assert len(completed.stdout.splitlines()) == 1
    assert result["steps"] == SHORT_JOB_STEPS
    lines = completed.stderr.splitlines()
    assert lines[0].startswith("job.progress job=digits epoch=1 step=1/60 loss=")
    evaluated = [line for line in lines if line.startswith("job.evaluated")]
    assert [line.split()[3] for line in evaluated] == ["step=45/60", "step=60/60"]
    assert lines[-1].startswith("job.finished job=digits epoch=2 step=60/60")
    assert f"accuracy={result['test_accuracy']:.4f}" in lines[-1]


def test_watch_store_finished_job(trained):
    store, _ = trained

    completed = mpnn("watch", "digits", "--store", str(store), "--timeout", "5")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1].startswith("job.finished job=digits epoch=2 step=60/60 ")


def test_watch_store_unknown_job_fails(trained):
    store, _ = trained

    completed = mpnn("watch", "ghost", "--store", str(store), "--timeout", "1")

    assert completed.returncode == 1
    assert "job 'ghost' not found" in completed.stderr
    assert str(store) in completed.stderr


def test_watch_rejects_bad_job_name():
    completed = mpnn("watch", "a.b", "--timeout", "1")

    assert completed.returncode == 2
    assert "invalid job name 'a.b'" in completed.stderr


def test_plot_writes_png(trained, tmp_path):
    store, _ = trained
    output = tmp_path / "digits.png"

    completed = mpnn("plot", "digits", "--store", str(store), "-o", str(output))

    assert completed.returncode == 0, completed.stderr
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 600)
    with Image.open(output) as image:
        image.verify()
    with Image.open(output) as image:
        pixels = np.asarray(image.convert("RGB"))
    # Lines and text in several colours, not a blank canvas.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    assert f"{SHORT_JOB_STEPS + 2} history rows" in completed.stdout


def test_plot_default_output_name(trained, tmp_path):
    store, _ = trained

    completed = mpnn("plot", "digits", "--store", str(store), cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "digits-training.png").stat().st_size > 10_000


def test_plot_unknown_job_fails(trained, tmp_path):
    store, _ = trained

    completed = mpnn("plot", "ghost", "--store", str(store), "-o", str(tmp_path / "ghost.png"))

    assert completed.returncode == 1
    assert "job 'ghost'" in completed.stderr
    assert "mpnn status" in completed.stderr
    assert not (tmp_path / "ghost.png").exists()
