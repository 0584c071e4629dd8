# SPDX-License-Identifier: MIT OR Apache-2.0
"""The image writer against the reference data: every conformance dump must give exactly the
bytes mkcomposefs 1.0.8 wrote (sha256), the same fs-verity digest and format version; fsck.erofs
must accept every image; reading the image back and dumping it must rebuild the same bytes."""

import hashlib
import shutil
import struct
import subprocess

import pytest
from cfsdump import canonical
from cfsrun import CONFORMANCE_DUMPS as DUMPS, cfsctl, conformance_rows, unpack_conformance_dumps



ROWS = conformance_rows()


def fsck(path):
    r = subprocess.run(["fsck.erofs", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"fsck.erofs refused {path}: {r.stdout}{r.stderr}"


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    return unpack_conformance_dumps(tmp_path_factory.mktemp("dumps"))


def test_all_conformance_dumps_listed():
    assert len(ROWS) >= 14
    names = {r["dump"] for r in ROWS}
    assert {p.name[:-3] for p in DUMPS.glob("*.dump.gz")} == names


@pytest.mark.parametrize("row", ROWS, ids=[r["dump"] for r in ROWS])
def test_reference_bytes_digest_and_version(row, dumps, tmp_path):
    img = tmp_path / "out.img"
    r = cfsctl("build", "--from-dump", dumps[row["dump"]], img, "--print-digest")
    assert r.returncode == 0, r.stderr
    data = img.read_bytes()
    assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
    assert r.stdout.decode().strip() == row["image_fsverity_sha256"]
    magic, hversion, _flags, version = struct.unpack_from("<IIII", data, 0)
    assert (magic, hversion) == (0xD078629A, 1)
    assert version == int(row["composefs_version"])
    if shutil.which("fsck.erofs"):
        fsck(img)
    # info dump | build --from-dump - gives the same bytes.
    d = cfsctl("info", "dump", img)
    assert d.returncode == 0, d.stderr
    img2 = tmp_path / "again.img"
    b = cfsctl("build", "--from-dump", "-", img2, input=d.stdout)
    assert b.returncode == 0, b.stderr
    assert img2.read_bytes() == data


@pytest.mark.parametrize("row", ROWS[:3], ids=[r["dump"] for r in ROWS[:3]])
def test_print_digest_only_writes_nothing(row, dumps, tmp_path):
    r = cfsctl("build", "--from-dump", "--print-digest-only", dumps[row["dump"]], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == row["image_fsverity_sha256"]
    assert list(tmp_path.iterdir()) == []


def test_threads_do_not_change_bytes(dumps, tmp_path):
    from composefs import _native

    name = max(dumps, key=lambda n: dumps[n].stat().st_size)
    outs = set()
    for t in (1, 2, 4):
        res = _native.build_from_dump(str(dumps[name]), None, threads=t, return_image=True)
        outs.add(hashlib.sha256(res.image).hexdigest())
    assert len(outs) == 1


@pytest.mark.parametrize("row", ROWS, ids=[r["dump"] for r in ROWS])
def test_image_reads_back_as_its_dump(row, dumps, tmp_path):
    """Everything the dump says comes back from the image, except what the format derives
    (directory sizes and link counts) and a directory's own trusted.overlay.opaque when it holds
    whiteouts in format 1 (the writer overrides it with its opaque=x marking, as mkcomposefs does;
    --no-opaque leaves those marks out of the dump, as they were not in the source)."""
    img = tmp_path / "out.img"
    assert cfsctl("build", "--from-dump", dumps[row["dump"]], img).returncode == 0
    back = cfsctl("info", "dump", "--no-opaque", img)
    assert back.returncode == 0
    want, got = canonical(dumps[row["dump"]].read_bytes()), canonical(back.stdout)
    assert set(want) == set(got)
    for names, e in want.items():
        if e["mode"] & 0o170000 == 0o040000 and int(row["composefs_version"]) == 1:
            e = dict(e, xattrs=tuple(x for x in e["xattrs"] if x[0] != b"trusted.overlay.opaque"))
            g = dict(got[names], xattrs=tuple(x for x in got[names]["xattrs"] if x[0] != b"trusted.overlay.opaque"))
        else:
            g = got[names]
        assert g == e, sorted(names)
