import subprocess
import sys

import stalign


def test_version_and_lazy_submodules():
    assert stalign.__version__
    assert "io" in dir(stalign)


def test_cli_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "stalign", "--help"], capture_output=True, text=True, check=True
    )
    assert "build-pairs" in out.stdout or "COMMAND" in out.stdout
