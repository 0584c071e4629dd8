# SPDX-License-Identifier: MIT OR Apache-2.0
"""Guest tests: they run only inside the QEMU guest booted by `make qemu-test` (qemu/run.py).

On the host every test in this directory is skipped with a clear reason, so `make test` stays green.
In the guest (CFS_GUEST=1) the environment provides:
  CFS_VERITY_DIR  an ext4 file system made with `-O verity` (real fs-verity), writable
  CFS_VERITY_DEV  its block device (/dev/vda)
  CFS_OUT_DIR     a directory shared with the host (qemu/work/run/), for artefacts
  CFS_MODULES     our kernel modules loaded at boot, colon-separated paths (may be empty)
  CFS_REPO        the repository root (read-only, shared from the host over 9p)
Helpers for tests live in guestutil.py (`import guestutil`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

IN_GUEST = os.environ.get("CFS_GUEST") == "1"
GUEST_DIR = Path(__file__).resolve().parent
SKIP_REASON = "runs only inside the QEMU guest (make qemu-test)"


def pytest_collection_modifyitems(config, items):
    if IN_GUEST:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if GUEST_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def verity_root() -> Path:
    """The mount point of the fs-verity capable ext4 disk."""
    root = Path(os.environ["CFS_VERITY_DIR"])
    assert root.is_dir(), f"CFS_VERITY_DIR={root} is not a directory"
    return root


@pytest.fixture
def verity_tmp(verity_root: Path, request) -> Path:
    """A fresh directory on the fs-verity disk, removed after the test."""
    d = verity_root / "t" / f"{request.node.name[:80]}-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)
