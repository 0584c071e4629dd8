# SPDX-License-Identifier: MIT OR Apache-2.0
"""Shared helpers for host and guest tests: where the conformance data is, and running the CLI as
a user would.

Import from here, not from ``conftest`` (``tests/guest`` has a conftest of its own, and the two
would shadow each other as modules).
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The reference data the writer and the digests are checked against, kept in the repository so the
# tests run from any checkout (README.md there says what each file holds and where it came from).
CONFORMANCE = REPO / "tests" / "data" / "conformance"


def cfsctl(*args, input=None, cwd=None):
    """Run the CLI as a user would; returns CompletedProcess with bytes output."""
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
        input=input,
        cwd=cwd,
        capture_output=True,
        timeout=300,
    )
