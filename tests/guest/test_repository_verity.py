# SPDX-License-Identifier: MIT OR Apache-2.0
"""Repository on a filesystem with fs-verity (runs in the QEMU guest): imports enable fs-verity
on objects and on the image file, a mount by name is checked by the kernel (digest=, every file
verified), and a tampered object is found by fsck and refused by the mount."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

VERITY_DIR = os.environ.get("CFS_VERITY_DIR")
pytestmark = pytest.mark.skipif(
    not VERITY_DIR or os.geteuid() != 0,
    reason="needs real fs-verity: set CFS_VERITY_DIR to an ext4 -O verity directory (the QEMU guest does)",
)


def cfsctl(*args):
    return subprocess.run([sys.executable, "-m", "composefs.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def measure(path) -> str:
    out = subprocess.run(["fsverity", "measure", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[0].removeprefix("sha256:")


def test_repository_with_fsverity(tmp_path):
    base = os.path.join(VERITY_DIR, "repo-" + uuid.uuid4().hex[:8])
    repo = os.path.join(base, "repo")
    src = os.path.join(base, "src")  # the source may be anywhere; keep it on the same disk
    os.makedirs(os.path.join(src, "d"))
    data = {f"d/f{i}": os.urandom(5000 + i) for i in range(5)}
    for k, v in data.items():
        with open(os.path.join(src, k), "wb") as f:
            f.write(v)
    assert cfsctl("init", "--repo", repo).returncode == 0
    r = cfsctl("import", src, "--name", "app", "--repo", repo, "--json")
    assert r.returncode == 0, r.stderr
    digest = json.loads(r.stdout)["digest"]
    # fs-verity is on: the image's measured digest is its name, objects' measured digests theirs
    assert measure(os.path.join(repo, "images", digest)) == digest
    objs = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(repo, "objects")) for f in fs]
    assert len(objs) == 5
    for o in objs:
        assert measure(o) == os.path.basename(os.path.dirname(o)) + os.path.basename(o)
    assert cfsctl("fsck", "--repo", repo).returncode == 0
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = cfsctl("mount", "app", mnt, "--repo", repo, "--json")
    assert r.returncode == 0, r.stderr
    try:
        info = json.loads(r.stdout)
        assert info["digest"] == digest and info["verity_check"] == 2
        for k, v in data.items():
            assert (mnt / k).read_bytes() == v
    finally:
        assert cfsctl("umount", mnt).returncode == 0


def test_oci_large_objects_not_read_back(tmp_path):
    """A layer's large files (streamed into the store) get fs-verity without being read back
    from the device: they are written through the page cache, where enabling fs-verity finds
    them. Direct I/O (which the store uses on filesystems without fs-verity) would make the
    kernel read each one back to build its Merkle tree."""
    import ocireg

    big = {f"big{i}": os.urandom(8 << 20) for i in range(2)}
    lay = ocireg.Layout(tmp_path / "layout")  # on the guest's tmpfs: its reads are no block I/O
    entries = [ocireg.E(k, v) for k, v in big.items()] + [ocireg.E("small", b"s" * 5000)]
    ocireg.tag(lay, [ocireg.build_image(lay, [(entries, "gzip")])])
    repo = os.path.join(VERITY_DIR, "repo-" + uuid.uuid4().hex[:8])
    assert cfsctl("init", "--repo", repo).returncode == 0
    # Waited for with wait4, for the block reads of the import itself (ru_inblock, 512-byte units).
    p = subprocess.Popen([sys.executable, "-m", "composefs.cli", "oci", "import", str(lay.root), "--name", "x",
                          "--repo", repo], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0, err
    read = usage.ru_inblock * 512
    assert read < (8 << 20), f"{read} bytes read from the device: large objects were read back"
    objs = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(repo, "objects")) for f in fs]
    assert sorted(os.path.getsize(o) for o in objs) == [5000, 8 << 20, 8 << 20]
    for o in objs:
        assert measure(o) == os.path.basename(os.path.dirname(o)) + os.path.basename(o)
