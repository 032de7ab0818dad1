"""`mpnn import` and `mpnn export` as a user runs them, in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from mpnn_async.data import DatasetSpec, load_dataset
from mpnn_async.planning import load_plan
from mpnn_async.runtime.job import JobSpec
from mpnn_async.runtime.reference_run import train_reference
from tests.interchange.helpers import (
    assert_tensors_bit_equal,
    canonical_tensors,
    random_parameters,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"  # 4-6-5-3 in float64, no [job] table
# Runs mpnn where `import torch` raises ModuleNotFoundError, as on a machine
# without PyTorch. (Setting sys.modules["torch"] = None would break SciPy, which
# looks for "torch" in sys.modules.)
WITHOUT_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
from mpnn_async.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
STEPS = 3


def mpnn(*args, cwd, torch=False):
    command = [sys.executable, "-m", "mpnn_async"] if torch else [sys.executable, "-c", WITHOUT_TORCH]
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=environment,
        check=False,
    )


@pytest.fixture
def short_digits(tmp_path):
    """configs/digits.toml stopped after a few steps."""
    config = tmp_path / "digits.toml"
    text = (ROOT / "configs" / "digits.toml").read_text()
    config.write_text(text.replace("epochs = 12", f"epochs = 1\nmax_steps = {STEPS}"))
    return config


@pytest.mark.slow
def test_import_export_then_train(short_digits, tmp_path):
    plan = load_plan(short_digits)
    imported = random_parameters(plan.spec, extreme_values=False)
    np.savez(tmp_path / "start.npz", **canonical_tensors(imported))

    created = mpnn("import", short_digits, "start.npz", "--store", "store", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created model 'digits' in store: 3 dense layers, 17226 parameters (float32)")

    exported = mpnn("export", "digits", "start.safetensors", "--store", "store", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "safetensors with layers naming" in exported.stdout
    assert_tensors_bit_equal(safetensors.numpy.load_file(tmp_path / "start.safetensors"), canonical_tensors(imported))

    trained = mpnn("train", short_digits, "--store", "store", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]

    after = mpnn("export", "digits", "after.npz", "--store", "store", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert f"at step {STEPS}" in after.stdout
    job = JobSpec.from_file(short_digits)
    dataset = load_dataset(DatasetSpec.from_dict(job.dataset), dtype=job.model.np_dtype)
    reference = train_reference(job, dataset, initial=[(w.copy(), b.copy()) for w, b in imported])
    with np.load(tmp_path / "after.npz", allow_pickle=False) as archive:
        for name, expected in canonical_tensors(reference.parameters).items():
            np.testing.assert_allclose(archive[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_shape_mismatch_names_layer(short_digits, tmp_path):
    parameters = random_parameters(load_plan(short_digits).spec, extreme_values=False)
    tensors = canonical_tensors(parameters)
    tensors["layers.2.weight"] = np.zeros((64, 100), dtype=np.float32)
    np.savez(tmp_path / "bad.npz", **tensors)

    completed = mpnn("import", short_digits, "bad.npz", "--store", "store", cwd=tmp_path)

    assert completed.returncode == 3
    assert completed.stderr.strip() == (
        "mpnn import: invalid input: layer 2: weight shape (64, 100) does not match the model's "
        "(64, 128) (tensor 'layers.2.weight')"
    )
    assert not (tmp_path / "store" / "models" / "digits").exists()


def test_existing_model_needs_overwrite(tmp_path):
    parameters = random_parameters(load_plan(TINY).spec)
    np.savez(tmp_path / "w.npz", **canonical_tensors(parameters))
    first = mpnn("import", TINY, "w.npz", "--model", "tiny", "--store", "store", cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    again = mpnn("import", TINY, "w.npz", "--model", "tiny", "--store", "store", cwd=tmp_path)
    replaced = mpnn("import", TINY, "w.npz", "--model", "tiny", "--store", "store", "--overwrite", cwd=tmp_path)

    assert again.returncode == 3
    assert "model 'tiny' already exists" in again.stderr
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.startswith("replaced the weights of model 'tiny'")
    assert "partitions a v2, b v2, c v2" in replaced.stdout


def test_model_name_required_without_job_table(tmp_path):
    np.savez(tmp_path / "w.npz", **canonical_tensors(random_parameters(load_plan(TINY).spec)))

    completed = mpnn("import", TINY, "w.npz", "--store", "store", cwd=tmp_path)

    assert completed.returncode == 3
    assert "--model: missing, and the config has no [job] table" in completed.stderr


def test_export_of_unknown_model(tmp_path):
    (tmp_path / "store").mkdir()

    completed = mpnn("export", "nothing", "out.npz", "--store", "store", cwd=tmp_path)

    assert completed.returncode == 1
    assert "model 'nothing' not found in store" in completed.stderr
    assert not (tmp_path / "out.npz").exists()


def test_torch_files_need_torch(tmp_path):
    np.savez(tmp_path / "w.npz", **canonical_tensors(random_parameters(load_plan(TINY).spec)))
    assert mpnn("import", TINY, "w.npz", "--model", "tiny", "--store", "store", cwd=tmp_path).returncode == 0
    (tmp_path / "w.pt").write_bytes(b"not read")

    exported = mpnn("export", "tiny", "w.pt", "--store", "store", cwd=tmp_path)
    imported = mpnn("import", TINY, "w.pt", "--model", "other", "--store", "store", cwd=tmp_path)

    assert exported.returncode == 3
    assert "to write PyTorch files, PyTorch is needed" in exported.stderr
    assert imported.returncode == 3
    assert "to read PyTorch files, PyTorch is needed" in imported.stderr


@pytest.mark.slow
def test_torch_export_loads_into_sequential(tmp_path):
    torch = pytest.importorskip("torch")
    np.savez(tmp_path / "w.npz", **canonical_tensors(random_parameters(load_plan(TINY).spec)))
    assert mpnn("import", TINY, "w.npz", "--model", "tiny", "--store", "store", cwd=tmp_path).returncode == 0

    completed = mpnn("export", "tiny", "tiny.pt", "--store", "store", cwd=tmp_path, torch=True)

    assert completed.returncode == 0, completed.stderr
    assert "torch.nn.Sequential(Linear(4, 6), Tanh(), Linear(6, 5), ReLU(), Linear(5, 3))" in completed.stdout
    module = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)
    ).double()
    module.load_state_dict(torch.load(tmp_path / "tiny.pt", weights_only=True))
    with np.load(tmp_path / "w.npz", allow_pickle=False) as archive:
        assert np.array_equal(module[2].weight.detach().numpy(), archive["layers.2.weight"])
