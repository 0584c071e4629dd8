import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFORMANCE = REPO.parent / "shared" / "conformance"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def cfsctl(*args, input=None, cwd=None):
    """Run the CLI as a user would; returns CompletedProcess with bytes output."""
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
        input=input,
        cwd=cwd,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture
def run_cfsctl():
    return cfsctl
