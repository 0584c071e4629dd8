# SPDX-License-Identifier: MIT OR Apache-2.0
"""The guest environment that qemu/run.py promises: a real 6.12 kernel, an fs-verity disk, modules."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import guestutil


def test_running_in_the_qemu_guest_kernel():
    assert os.environ["CFS_GUEST"] == "1"
    assert platform.release().startswith("6.12."), platform.release()
    assert os.geteuid() == 0


def test_verity_dir_is_writable_ext4_with_verity_feature(verity_root: Path):
    assert guestutil.fs_type(verity_root) == "ext4"
    out = guestutil.run("dumpe2fs", "-h", os.environ["CFS_VERITY_DEV"]).stdout
    features = next(l for l in out.splitlines() if l.startswith("Filesystem features:"))
    assert "verity" in features.split()
    probe = verity_root / ".probe"
    probe.write_bytes(b"x")
    probe.unlink()


def test_stock_filesystems_available():
    fs = Path("/proc/filesystems").read_text().split()
    for name in ("ext4", "erofs", "overlay", "9p", "tmpfs"):
        assert name in fs, f"{name} missing from /proc/filesystems"


def test_requested_modules_are_loaded():
    wanted = [m for m in os.environ.get("CFS_MODULES", "").split(":") if m]
    loaded = {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
    for ko in wanted:
        name = guestutil.run("modinfo", "-F", "name", ko).stdout.strip() or Path(ko).stem
        assert name.replace("-", "_") in loaded, f"{ko} ({name}) not in /proc/modules"
