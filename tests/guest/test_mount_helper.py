# SPDX-License-Identifier: MIT OR Apache-2.0
"""The native mount.composefs helper with real fs-verity and, where loaded, our kernel module
(`make qemu-test`): the reference spellings `verity`, `digest=` and `idmap=` on both kernel
paths (the host tests cover the stock path without fs-verity)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cfs_images  # noqa: E402
from test_mount_verity import Setup, flip_byte_100, mounts_at, read  # noqa: E402

from composefs import mount as cm  # noqa: E402

VERITY_DIR = os.environ.get("CFS_VERITY_DIR")
pytestmark = pytest.mark.skipif(
    not VERITY_DIR or os.geteuid() != 0,
    reason="needs real fs-verity: set CFS_VERITY_DIR to an ext4 -O verity directory (the QEMU guest does)",
)

HELPER = os.path.join(os.path.dirname(sys.executable), "mount.composefs")
BACKENDS = ["overlay"] + (["kernel"] if cm.kernel_module_available() else [])


def helper(*args):
    return subprocess.run([HELPER, *map(str, args)], capture_output=True, text=True, timeout=120)


def umount(path):
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture
def setup():
    base = os.path.join(VERITY_DIR, "mount-helper", uuid.uuid4().hex[:8])
    os.makedirs(base)
    s = Setup(base)
    yield s
    if mounts_at(s.mnt):
        subprocess.run(["umount", "-l", s.mnt], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def test_module_is_there_when_built():
    """The module path below must really run in the guest run that loads it."""
    if os.environ.get("CFS_MODULES"):
        assert "kernel" in BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_digest_and_verity_through_the_helper(setup, backend):
    r = helper(setup.image, setup.mnt, "-o", f"basedir={setup.store},digest={setup.digest},backend={backend}")
    assert r.returncode == 0, r.stderr
    try:
        (e,) = [e for e in cm.read_mountinfo() if e.mountpoint == setup.mnt]
        assert e.fstype == ("composefs" if backend == "kernel" else "overlay")
        if backend == "overlay":
            assert "verity=require" in e.super_options.split(",")
        assert cfs_images.snapshot(setup.mnt)["entries"] == setup.snap["entries"]
    finally:
        umount(setup.mnt)
    wrong = ("0" if setup.digest[0] != "0" else "1") + setup.digest[1:]
    r = helper(setup.image, setup.mnt, "-o", f"basedir={setup.store},digest={wrong},backend={backend}")
    assert r.returncode == 32 and "image digest mismatch" in r.stderr
    # `verity` (and, on this kernel, `tryverity`): a tampered object reads as EIO.
    store, _ = setup.store_with_replaced_object("tampered", "block", flip_byte_100, verity=True)
    for opt in ("verity", "tryverity"):
        r = helper("-s", setup.image, setup.mnt, "-o", f"basedir={store},{opt},backend={backend}")
        assert r.returncode == 0, r.stderr
        try:
            with pytest.raises(OSError) as ei:
                read(os.path.join(setup.mnt, "block"))
            assert ei.value.errno == errno.EIO
            assert read(os.path.join(setup.mnt, "large.bin")) == read(os.path.join(setup.src, "large.bin"))
        finally:
            umount(setup.mnt)
    assert mounts_at(setup.mnt) == []


@pytest.fixture
def userns():
    with cfs_images.user_namespace() as ns:
        yield ns


@pytest.mark.parametrize("backend", BACKENDS)
def test_idmap_on_both_kernel_paths(setup, userns, backend):
    want = {k: (cfs_images.idmapped(e["uid"]), cfs_images.idmapped(e["gid"])) for k, e in setup.snap["entries"].items()}
    r = helper(setup.image, setup.mnt, "-o", f"basedir={setup.store},idmap={userns},backend={backend}")
    assert r.returncode == 0, r.stderr
    try:
        got = cfs_images.snapshot(setup.mnt, content=False)["entries"]
        assert {k: (e["uid"], e["gid"]) for k, e in got.items()} == want
        assert read(os.path.join(setup.mnt, "large.bin")) == read(os.path.join(setup.src, "large.bin"))
    finally:
        umount(setup.mnt)
    assert mounts_at(setup.mnt) == []
