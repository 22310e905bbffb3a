"""deploy/Containerfile passes hadolint (the Dockerfile linter, from the dev extras) with no finding at all."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTAINERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Containerfile"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint is not installed (pip install -e '.[dev]')")
def test_containerfile_passes_hadolint() -> None:
    """Every hadolint rule, down to its informational ones, holds for the Containerfile."""
    done = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "info", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
