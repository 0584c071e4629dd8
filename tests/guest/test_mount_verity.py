# SPDX-License-Identifier: MIT OR Apache-2.0
"""Verified mounts: need real fs-verity, so they run in the QEMU guest (`make qemu-test`).

The guest provides an ext4 file system made with ``-O verity`` at ``$CFS_VERITY_DIR``; without it
every test here is skipped. Each test builds a small tree into an image and an object store on that
file system, enables fs-verity on the objects (and the image), and mounts with ``cfsctl mount``
through every backend the guest has (the stock EROFS + overlayfs path always, the ``composefs``
module when it is loaded).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TESTS)

import cfs_images  # noqa: E402

from composefs import mount as cm  # noqa: E402

VERITY_DIR = os.environ.get("CFS_VERITY_DIR")
pytestmark = pytest.mark.skipif(
    not VERITY_DIR or os.geteuid() != 0,
    reason="needs real fs-verity: set CFS_VERITY_DIR to an ext4 -O verity directory (the QEMU guest does)",
)

BACKENDS = ["overlay"] + (["kernel"] if cm.kernel_module_available() else [])


def cfsctl(*args, check=False):
    r = subprocess.run([sys.executable, "-m", "composefs.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def enable_verity(path: str) -> None:
    r = subprocess.run(["fsverity", "enable", path], capture_output=True, text=True)
    if r.returncode != 0 and "File exists" not in r.stderr:  # already enabled (our store does it)
        raise AssertionError(f"fsverity enable {path}: {r.stderr}")


def measure(path: str) -> str:
    out = subprocess.run(["fsverity", "measure", path], capture_output=True, text=True, check=True).stdout
    return out.split()[0].removeprefix("sha256:")


def objects(store: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(store) for f in fs)


def mounts_at(path: str) -> list[str]:
    return [e.fstype for e in cm.read_mountinfo() if e.mountpoint == os.path.realpath(path)]


class Setup:
    """A tree, its image and objects on the verity file system, verity enabled everywhere."""

    def __init__(self, base: str):
        self.base = base
        self.src = cfs_images.make_tree(os.path.join(base, "src"), many=20, large=1_000_000)
        self.store = os.path.join(base, "objects")
        self.image = os.path.join(base, "tree.cfs")
        cfs_images.build_image(self.src, self.image, self.store, base)
        for o in objects(self.store):
            enable_verity(o)
        enable_verity(self.image)
        self.digest = measure(self.image)
        self.snap = cfs_images.snapshot(self.src)
        self.mnt = os.path.join(base, "mnt")
        os.makedirs(self.mnt, exist_ok=True)

    def object_of(self, rel: str) -> str:
        with open(os.path.join(self.src, rel), "rb") as f:
            h = cfs_images.fsverity_digest(f.read()).hex()
        return os.path.join(self.store, h[:2], h[2:])

    def store_copy(self, name: str) -> str:
        """A copy of the store whose objects have fs-verity too."""
        dst = os.path.join(self.base, name)
        shutil.copytree(self.store, dst)
        for o in objects(dst):
            enable_verity(o)
        return dst

    def store_with_replaced_object(self, name: str, rel: str, change, verity: bool) -> tuple[str, bytes]:
        """A store copy in which the object of `rel` is replaced by `change(old bytes)`, with or
        without fs-verity of its own (a fs-verity file cannot be rewritten in place)."""
        store = self.store_copy(name)
        victim = os.path.join(store, os.path.relpath(self.object_of(rel), self.store))
        data = change(read(victim))
        os.unlink(victim)
        with open(victim, "wb") as f:
            f.write(data)
        if verity:
            enable_verity(victim)
        return store, data

    @contextlib.contextmanager
    def mounted(self, store: str, level: str, backend: str):
        cfsctl("mount", self.image, self.mnt, "--basedir", store, "--verity-check", level, "--backend", backend,
               check=True)
        try:
            yield self.mnt
        finally:
            cfsctl("umount", self.mnt, check=True)

    def assert_eio_only_for(self, bad: str, good: str) -> None:
        with pytest.raises(OSError) as ei:
            read(os.path.join(self.mnt, bad))
        assert ei.value.errno == errno.EIO
        assert read(os.path.join(self.mnt, good)) == read(os.path.join(self.src, good))


def flip_byte_100(data: bytes) -> bytes:
    b = bytearray(data)
    b[100] ^= 0xFF
    return bytes(b)


@pytest.fixture
def setup():
    base = os.path.join(VERITY_DIR, "mount-verity", uuid.uuid4().hex[:8])
    os.makedirs(base)
    s = Setup(base)
    yield s
    if mounts_at(s.mnt):
        subprocess.run(["umount", "-l", s.mnt], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("backend", BACKENDS)
def test_right_digest_mounts_and_everything_verifies(setup, backend):
    r = cfsctl("mount", setup.image, setup.mnt, "--basedir", setup.store, "--digest", setup.digest,
               "--backend", backend, "--json", check=True)
    info = json.loads(r.stdout)
    assert info["verity_check"] == 2 and info["digest"] == setup.digest
    try:
        got = cfs_images.snapshot(setup.mnt)
        assert got["entries"] == setup.snap["entries"]
        if backend == "overlay":
            assert "verity=require" in [e for e in cm.read_mountinfo() if e.mountpoint == setup.mnt][0].super_options
    finally:
        cfsctl("umount", setup.mnt, check=True)
    assert mounts_at(setup.mnt) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_digest_refuses_before_mounting(setup, backend):
    wrong = ("0" if setup.digest[0] != "0" else "1") + setup.digest[1:]
    r = cfsctl("mount", setup.image, setup.mnt, "--basedir", setup.store, "--digest", wrong, "--backend", backend)
    assert r.returncode != 0
    assert "image digest mismatch" in r.stderr and setup.digest in r.stderr
    assert mounts_at(setup.mnt) == []


def test_digest_given_for_image_without_fsverity_is_refused(setup):
    plain = os.path.join(setup.base, "plain.cfs")
    shutil.copyfile(setup.image, plain)  # a copy has no fs-verity
    r = cfsctl("mount", plain, setup.mnt, "--basedir", setup.store, "--digest", setup.digest)
    assert r.returncode != 0 and "has no fs-verity" in r.stderr
    assert mounts_at(setup.mnt) == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", ["1", "2"])
def test_tampered_object_gives_eio(setup, backend, level):
    store, data = setup.store_with_replaced_object("tampered", "block", flip_byte_100, verity=True)
    with setup.mounted(store, level, backend):
        setup.assert_eio_only_for("block", good="large.bin")
    # Without checks the tampered bytes are served: the checks above are what caught it.
    with setup.mounted(store, "0", backend) as mnt:
        assert read(os.path.join(mnt, "block")) == data


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", ["1", "2"])
def test_object_without_fsverity_is_refused_when_checking(setup, backend, level):
    # large.bin is over 64 bytes, so it has an object; same bytes, no fs-verity.
    store, _ = setup.store_with_replaced_object("noverity", "large.bin", bytes, verity=False)
    with setup.mounted(store, level, backend):
        setup.assert_eio_only_for("large.bin", good="block")


@pytest.mark.parametrize("backend", BACKENDS)
def test_verity_check_2_requires_a_recorded_digest(setup, backend):
    """An image entry that records no digest (empty metacopy xattr) passes 1, fails 2."""
    h = cfs_images.add_object(setup.store, b"no digest recorded\n")
    enable_verity(os.path.join(setup.store, h[:2], h[2:]))
    # Our writer, like mkcomposefs, records an empty trusted.overlay.metacopy for a file whose dump
    # line has a payload but no digest: the object is redirected to, no digest is recorded.
    dump = os.path.join(setup.base, "nodigest.dump")
    with open(dump, "w") as f:
        f.write("/ 0 40755 2 0 0 0 0.0 - - -\n")
        f.write(f"/f 19 100644 1 0 0 0 0.0 {h[:2]}/{h[2:]} - -\n")
    image = os.path.join(setup.base, "nodigest.cfs")
    cfsctl("build", "--from-dump", dump, image, check=True)
    cfsctl("mount", image, setup.mnt, "--basedir", setup.store, "--verity-check", "1", "--backend", backend,
           check=True)
    try:
        assert read(os.path.join(setup.mnt, "f")) == b"no digest recorded\n"
    finally:
        cfsctl("umount", setup.mnt, check=True)
    cfsctl("mount", image, setup.mnt, "--basedir", setup.store, "--verity-check", "2", "--backend", backend,
           check=True)
    try:
        with pytest.raises(OSError) as ei:
            read(os.path.join(setup.mnt, "f"))
        assert ei.value.errno == errno.EIO
    finally:
        cfsctl("umount", setup.mnt, check=True)


def test_basedir_without_fsverity_support_is_refused(setup, tmp_path):
    """/tmp in the guest is tmpfs (no fs-verity): verification there is refused up front."""
    if os.environ.get("CFS_GUEST") != "1":
        pytest.skip("relies on the guest's tmpfs /tmp")
    other = str(tmp_path / "objects")
    shutil.copytree(setup.store, other)
    r = cfsctl("mount", setup.image, setup.mnt, "--basedir", other, "--verity-check", "2")
    assert r.returncode != 0 and "does not support fs-verity" in r.stderr
    assert mounts_at(setup.mnt) == []
