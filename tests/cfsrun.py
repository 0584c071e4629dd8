# SPDX-License-Identifier: MIT OR Apache-2.0
"""Shared helpers for host and guest tests: where the conformance data is, and running the CLI as
a user would.

Import from here, not from ``conftest`` (``tests/guest`` has a conftest of its own, and the two
would shadow each other as modules).
"""

import gzip
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The reference data the writer and the digests are checked against, kept in the repository so the
# tests run from any checkout (README.md there says what each file holds and where it came from).
CONFORMANCE = REPO / "tests" / "data" / "conformance"
CONFORMANCE_DUMPS = CONFORMANCE / "dumps"


def conformance_rows() -> list[dict[str, str]]:
    """The rows of dumps/expected.tsv (the reference mkcomposefs's digest and size per dump)."""
    lines = (CONFORMANCE_DUMPS / "expected.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


def unpack_conformance_dumps(dest: Path) -> dict[str, Path]:
    """Gunzip every listed dump into ``dest``; its name -> the dump file."""
    out = {}
    for row in conformance_rows():
        p = dest / row["dump"]
        p.write_bytes(gzip.decompress((CONFORMANCE_DUMPS / (row["dump"] + ".gz")).read_bytes()))
        out[row["dump"]] = p
    return out


def cfsctl(*args, input=None, cwd=None):
    """Run the CLI as a user would; returns CompletedProcess with bytes output."""
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
        input=input,
        cwd=cwd,
        capture_output=True,
        timeout=300,
    )
