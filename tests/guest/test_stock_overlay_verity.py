# SPDX-License-Identifier: MIT OR Apache-2.0
"""The stock kernel path (EROFS + overlayfs data-only layer + verity=require), exercised directly.

No project code here: an EROFS image made by mkfs.erofs from files that carry the overlayfs
metacopy (with fs-verity digest) and redirect xattrs, as a composefs image does, mounted the way
design.md's "stock kernel" path mounts it. This pins down what Debian's 6.12 kernel enforces, so the
tests of our own writer/mount code and of our module have a verified baseline.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import guestutil as g


def make_object(objdir: Path, data: bytes, verity: bool = True) -> str:
    """Stores `data` as objects/XX/<rest> named by its fs-verity digest; returns the hex digest."""
    tmp = objdir / ".tmp"
    tmp.write_bytes(data)
    if verity:
        g.fsverity_enable(tmp)
        digest = g.fsverity_measure(tmp)
    else:
        digest = g.fsverity_digest_userspace(tmp)
    hexd = digest.split(":", 1)[1]
    (objdir / hexd[:2]).mkdir(exist_ok=True)
    tmp.rename(objdir / hexd[:2] / hexd[2:])
    return hexd


def stage_metacopy(path: Path, size: int, digest_hex: str, redirect_hex: str | None = None) -> None:
    """An image entry for an external file: sparse, with overlay metacopy (v0, digest) + redirect."""
    with open(path, "wb") as f:
        f.truncate(size)
    target = redirect_hex or digest_hex
    os.setxattr(path, "trusted.overlay.metacopy", b"\x00\x24\x00\x01" + bytes.fromhex(digest_hex))
    os.setxattr(path, "trusted.overlay.redirect", f"/{target[:2]}/{target[2:]}".encode())


def read_errno(path: Path) -> int | bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        return e.errno


@pytest.fixture
def image(tmp_path: Path, verity_tmp: Path):
    objs = verity_tmp / "objects"
    objs.mkdir()
    good, big = b"verified content\n", os.urandom(300 * 1024 + 5)
    unverified, claimed, actual = b"object without fs-verity\n", b"what the image promises\n", b"what is stored\n"
    stage = tmp_path / "stage"
    stage.mkdir()
    stage_metacopy(stage / "good.txt", len(good), make_object(objs, good))
    stage_metacopy(stage / "big.bin", len(big), make_object(objs, big))
    stage_metacopy(stage / "noverity.txt", len(unverified), make_object(objs, unverified, verity=False))
    # The image records the digest of `claimed`; the object it redirects to holds `actual` (with
    # fs-verity, but another digest). Same size, so only the digest can tell.
    actual = actual.ljust(len(claimed), b".")
    tmpc = tmp_path / "claimed"
    tmpc.write_bytes(claimed)
    claimed_hex = g.fsverity_digest_userspace(tmpc).split(":", 1)[1]
    stage_metacopy(stage / "wrong.txt", len(claimed), claimed_hex, redirect_hex=make_object(objs, actual))
    (stage / "inline.txt").write_bytes(b"stored in the image itself\n")

    img = verity_tmp / "image.erofs"
    g.run("mkfs.erofs", "--quiet", "-T0", img, stage)
    g.fsverity_enable(img)
    return {
        "img": img, "objs": objs, "good": good, "big": big, "unverified": unverified,
        "actual": actual, "img_digest": g.fsverity_measure(img),
    }


def overlay_mount(tmp_path: Path, image, verity: str):
    lower, mnt = tmp_path / "lower", tmp_path / "mnt"
    lower.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    g.mount(image["img"], lower, "erofs", "ro")
    try:
        g.mount("overlay", mnt, "overlay",
                f"ro,metacopy=on,redirect_dir=on,verity={verity},lowerdir={lower}::{image['objs']}")
    except Exception:
        g.umount(lower)
        raise
    return lower, mnt


@pytest.fixture
def mounted_overlay(tmp_path: Path, image, request):
    lower, mnt = overlay_mount(tmp_path, image, request.param)
    yield mnt, image
    g.run("umount", mnt, check=False)
    g.run("umount", lower, check=False)


@pytest.mark.parametrize("mounted_overlay", ["require"], indirect=True)
def test_verity_require_serves_verified_files_and_refuses_the_rest(mounted_overlay):
    mnt, im = mounted_overlay
    assert g.fs_type(mnt) == "overlay"
    assert (mnt / "good.txt").read_bytes() == im["good"]
    assert (mnt / "big.bin").read_bytes() == im["big"]
    assert (mnt / "big.bin").stat().st_size == len(im["big"])
    assert (mnt / "inline.txt").read_bytes() == b"stored in the image itself\n"
    assert read_errno(mnt / "noverity.txt") == errno.EIO
    assert read_errno(mnt / "wrong.txt") == errno.EIO


@pytest.mark.parametrize("mounted_overlay", ["off"], indirect=True)
def test_without_verity_the_same_image_serves_everything(mounted_overlay):
    # The control for the test above: the refusals come from verity=require, not from the layout.
    mnt, im = mounted_overlay
    assert (mnt / "good.txt").read_bytes() == im["good"]
    assert (mnt / "noverity.txt").read_bytes() == im["unverified"]
    assert (mnt / "wrong.txt").read_bytes() == im["actual"]


def test_image_digest_is_measurable_before_mounting(image):
    assert image["img_digest"] == g.fsverity_digest_userspace(image["img"])
