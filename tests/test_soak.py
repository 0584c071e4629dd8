# SPDX-License-Identifier: MIT OR Apache-2.0
"""A short run of the concurrency soak (tests/soak.py; `make soak` runs the 10-minute one):
8 importers, gc and (as root) mounts on one repository, then fsck and every remaining name
mounted and compared with its source."""

import json
import os
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent / "soak.py"


def test_soak_short(tmp_path):
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, SOAK, "--seconds", "25", "--final-mounts", "3", "--work", tmp_path / "w",
                        "--report", report],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:] + r.stdout[-4000:]
    rep = json.loads(report.read_text())
    assert rep["problems"] == []
    assert rep["counts"]["imports"] >= 8 and rep["counts"]["gc"] >= 1, rep["counts"]
    if os.geteuid() == 0:
        assert rep["counts"]["mounts"] >= 1, rep["counts"]
    # Every import and gc took the lock, and the instrumentation saw each of them.
    locks = rep["locks"]
    assert locks["exclusive"]["wait"]["count"] >= rep["counts"]["gc"]
    assert locks["shared"]["wait"]["count"] >= rep["counts"]["imports"]
