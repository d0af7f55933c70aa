"""What users run: the package built as a wheel, installed with no extras in a fresh virtual
environment, runs the whole job (the first version's worker could not start: a dependency only the
dev tools brought)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.support import ROOT


@pytest.mark.timeout(600)
def test_a_plain_install_of_the_wheel_runs_the_demo(tmp_path: Path) -> None:
    # Given the wheel, installed with its declared dependencies only, in a fresh venv
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, timeout=300)  # fmt: skip
    [wheel] = (tmp_path / "dist").glob("identify_queue-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    # When its command runs the demo, from a directory where the source tree cannot be imported
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "AMPLITUDE_", "IDENTIFY_", "PYTHON"))}
    demo = subprocess.run([str(tmp_path / "venv" / "bin" / "identify-queue"), "demo", "--users", "200",
                           "--updates", "3"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    # Then the worker started, and every user's updates arrived, in order
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "delivered  600 updates" in demo.stdout, demo.stdout
    imported = subprocess.run([str(python), "-c", "import producers, worker; print(producers.__file__)"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert str(tmp_path / "venv") in imported.stdout
