"""The short digits job and the `mpnn` command line that the observe tests run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# 1437 training rows in batches of 32 make 45 steps an epoch, so evaluations come at 45 and 60.
SHORT_JOB_STEPS = 60


def mpnn(*arguments: str, cwd: Path = ROOT, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `mpnn` without a broker: MPNN_* variables of the caller's environment are left out."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MPNN_")}
    return subprocess.run(
        [sys.executable, "-m", "mpnn_async", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env=env,
    )


def short_digits_config(directory: Path) -> Path:
    config = directory / "digits-short.toml"
    text = (ROOT / "configs" / "digits.toml").read_text()
    config.write_text(text.replace("epochs = 12", f"epochs = 2\nmax_steps = {SHORT_JOB_STEPS}"))
    return config
