"""``python -m pipeline`` is the ``pipeline`` command: ``--version`` prints the version of the
installed distribution, ``pipeline-writes``, as its metadata has it."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path


def test_python_m_pipeline_prints_the_distributions_version(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--version"],
        cwd=tmp_path,  # no checkout, no .env: the installed package
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"pipeline {version('pipeline-writes')}\n"
