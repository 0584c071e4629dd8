# SPDX-License-Identifier: MIT OR Apache-2.0
"""The FUSE backend (`cfsctl mount --fuse`) against our `composefs` module in the QEMU guest.

Both mount the same images: conformance dumps and the generated tree of the host tests (every
file type, hardlinks, xattrs, whiteouts, overlay xattrs to escape, objects with real fs-verity);
the two mounts must agree entry by entry (tests/treewalk.py, the comparison the host test makes
against the stock path), keep their inode numbers when the kernel forgets its caches, and refuse
a tampered object with EIO alike (a fresh mount of each, after the comparison).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

import cfs_images
import cfsimage as ci
import treewalk

pytestmark = [
    pytest.mark.skipif(os.environ.get("CFS_GUEST") == "1" and not ci.module_loaded(),
                       reason="the composefs module is not loaded in this guest"),
    pytest.mark.skipif(os.environ.get("CFS_GUEST") == "1" and not os.path.exists("/dev/fuse"),
                       reason="no /dev/fuse in this guest (the initramfs loads the fuse module)"),
]

# One small conformance dump: the module is compared with the stock path on all of them in
# test_module.py; here each costs a FUSE daemon and a walk under TCG.
DUMPS = ["sample-2-3"]


def cfsctl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(ci._cfsctl() + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def mount_fuse(img: Path, mnt: Path, basedir: Path, verity_check: int) -> None:
    mnt.mkdir(parents=True, exist_ok=True)
    r = cfsctl("mount", img, mnt, "--basedir", basedir, "--fuse", "--verity-check", verity_check)
    assert r.returncode == 0, r.stderr


def umount_fuse(mnt: Path) -> None:
    r = cfsctl("umount", mnt)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def work(tmp_path):
    yield tmp_path
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(tmp_path))), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def compare(img: Path, objs: Path, work: Path, verity_check: int) -> dict:
    """Mount `img` with the module and with FUSE, walk both, assert they agree; the FUSE walk."""
    mod, fuse = work / "mod", work / "fuse"
    ci.mount_module(img, mod, [objs], verity_check=verity_check)
    try:
        mount_fuse(img, fuse, objs, verity_check)
        try:
            f, m = ci.walk_both(fuse, mod)
            assert treewalk.inode_numbers(fuse) == treewalk.inode_numbers(fuse, drop=True)
        finally:
            umount_fuse(fuse)
    finally:
        ci.umount(mod)
    assert treewalk.differences(treewalk.presented(f), treewalk.presented(m)) == []
    return f


@pytest.mark.parametrize("name", DUMPS)
def test_conformance_image_same_through_fuse_and_module(work, name):
    dump = ci.CONFORMANCE / f"{name}.dump.gz"
    img, objs = work / "image.cfs", work / "objects"
    ci.build_image(dump, img)
    objs.mkdir()
    ci.make_objects(dump, objs)
    f = compare(img, objs, work, verity_check=0)
    assert len(f["entries"]) > 100


@pytest.fixture
def rich_image(verity_tmp, work):
    """The host tests' generated tree, its objects stored on the verity disk (fs-verity enabled
    by the store)."""
    src = work / "rich"
    cfs_images.make_tree(str(src), large=300_000)
    cfs_images.add_overlay_markings(str(src))
    img, objs = verity_tmp / "rich.cfs", verity_tmp / "objects"
    r = cfsctl("build", src, img, "--digest-store", objs, "--hardlinks")
    assert r.returncode == 0, r.stderr
    return src, img, objs


def test_generated_tree_same_through_fuse_and_module_and_tampered_eio(rich_image, work):
    src, img, objs = rich_image
    f = compare(img, objs, work, verity_check=1)
    wo = f["entries"][b"/ovl/whiteout"]
    assert stat.S_ISREG(wo["mode"]) and wo["xattrs"]["trusted.overlay.whiteout"] == b""
    assert f["entries"][b"/ovl/marked"]["xattrs"]["trusted.overlay.custom"] == b"escaped"
    assert f["entries"][b"/dir/blockdev"]["rdev"] == os.makedev(259, 70000)
    assert any(len(group) == 3 for group in f["links"])
    tampered_objects_are_eio_on_both(src, img, objs, work)


def _object(objs: Path, data: bytes) -> Path:
    d = cfs_images.fsverity_digest(data).hex()
    return objs / d[:2] / d[2:]


def tampered_objects_are_eio_on_both(src: Path, img: Path, objs: Path, work: Path) -> None:
    """One object replaced by other content with fs-verity of its own, one by a changed copy
    without fs-verity: fresh mounts of both kinds refuse both files with EIO, and read the rest.
    (Part of the test above: the image is built once, a process under TCG costs seconds.)"""
    block = _object(objs, (src / "block").read_bytes())
    assert guest_measure(block) is not None, "the store did not enable fs-verity on the verity disk"
    block.unlink()
    block.write_bytes(b"evil" * 1024)
    subprocess.run(["fsverity", "enable", str(block)], check=True, capture_output=True)
    large = _object(objs, (src / "large.bin").read_bytes())
    data = bytearray(large.read_bytes())
    data[123_456] ^= 1
    large.unlink()
    large.write_bytes(bytes(data))

    mod, fuse = work / "mod", work / "fuse"
    ci.mount_module(img, mod, [objs], verity_check=1)
    mount_fuse(img, fuse, objs, 1)
    try:
        for mnt in (mod, fuse):
            for name in ("block", "large.bin"):
                with pytest.raises(OSError) as e:
                    (mnt / name).read_bytes()
                assert e.value.errno == errno.EIO, (mnt, name)
            assert (mnt / "dir/same-content-1").read_bytes() == (src / "dir/same-content-1").read_bytes()
    finally:
        umount_fuse(fuse)
        ci.umount(mod)


def guest_measure(path: Path) -> str | None:
    r = subprocess.run(["fsverity", "measure", str(path)], capture_output=True, text=True)
    return r.stdout.split()[0] if r.returncode == 0 else None
