# SPDX-License-Identifier: MIT OR Apache-2.0
"""`cfsctl build DIR IMAGE`: the image read back (`cfsctl info dump`) equals the source tree as
os.lstat/os.listxattr see it; --digest-store, --no-hardlinks, --threads, --json, errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from cfsdump import canonical
from scan_helpers import Spec, fsverity_digests, materialize, require_root, source_paths, src, tree_for_nobody
from test_scan import every_kind

CFSCTL = [sys.executable, "-m", "composefs.cli"]


def cfsctl(*args, check=True):
    r = subprocess.run([*CFSCTL, *map(os.fsdecode, args)], capture_output=True)
    if check:
        assert r.returncode == 0, r.stderr.decode()
    return r


def check_image_equals_source(root: bytes, image: str, *, no_hardlinks: bool) -> None:
    dump = cfsctl("info", "dump", "--no-opaque", image).stdout
    got = canonical(dump)
    by_path = {p: (names, e) for names, e in got.items() for p in names}
    want = source_paths(root)
    assert sorted(by_path) == sorted(want)
    files = [src(root, p) for p in want if stat.S_ISREG(os.lstat(src(root, p)).st_mode)
             and os.lstat(src(root, p)).st_size > 64]
    digests = fsverity_digests(files)
    for p in want:
        names, e = by_path[p]
        s = src(root, p)
        st = os.lstat(s)
        assert e["mode"] == st.st_mode, p
        assert (e["uid"], e["gid"]) == (st.st_uid, st.st_gid), p
        sec, nsec = divmod(st.st_mtime_ns, 10**9)
        assert e["mtime"] == b"%d.%d" % (sec, nsec) or e["mtime"] == b"%d.%09d" % (sec, nsec), p
        want_x = sorted((k.encode(), os.getxattr(s, k, follow_symlinks=False))
                        for k in os.listxattr(s, follow_symlinks=False))
        assert list(e["xattrs"]) == want_x, p
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            assert e["rdev"] == st.st_rdev, p
        if stat.S_ISLNK(st.st_mode):
            assert e["payload"] == os.readlink(s), p
        if stat.S_ISREG(st.st_mode):
            assert e["size"] == st.st_size, p
            if 0 < st.st_size <= 64:
                with open(s, "rb") as f:
                    assert e["content"] == f.read(), p
            elif st.st_size > 64:
                d = digests[s].encode()
                assert e["digest"] == d, p
                assert e["payload"] == d[:2] + b"/" + d[2:], p
        if not stat.S_ISDIR(st.st_mode):
            same_inode = {q for q in want if os.lstat(src(root, q)).st_ino == st.st_ino
                          and os.lstat(src(root, q)).st_dev == st.st_dev}
            if no_hardlinks:
                assert names == {p} and e["nlink"] == 1, p
            else:
                assert names == same_inode and e["nlink"] == len(same_inode), p


@pytest.mark.parametrize("no_hardlinks", [False, True])
def test_image_from_directory_reads_back_as_source(tmp_path, no_hardlinks):
    require_root()
    root = os.fsencode(tmp_path / "src")
    os.mkdir(root)
    materialize(root, every_kind())
    image = str(tmp_path / "img")
    store = str(tmp_path / "store")
    args = ["build", root, image, "--digest-store", store, "--json"] + ([] if no_hardlinks else ["--hardlinks"])
    summary = json.loads(cfsctl(*args).stdout)
    check_image_equals_source(root, image, no_hardlinks=no_hardlinks)
    assert summary["digest"] == fsverity_digests([image.encode()])[image.encode()]
    assert summary["counts"]["hardlinks"] == (0 if no_hardlinks else 4)
    # Every object the image names is in the store.
    assert cfsctl("info", "missing-objects", "--basedir", store, image).stdout.strip() == b""
    assert cfsctl("info", "missing-objects", image).stdout.strip() != b""


def test_json_stats_store_and_dedup(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    data = os.urandom(50_000)
    (root / "a").write_bytes(data)
    (root / "b").write_bytes(data)  # duplicate contents
    (root / "c").write_bytes(os.urandom(7000))
    (root / "small").write_bytes(b"tiny")
    store = tmp_path / "store"
    s1 = json.loads(cfsctl("build", root, tmp_path / "i1", "--digest-store", store, "--json").stdout)
    assert s1["objects"] == 2
    assert s1["bytes_stored"] == 57_000
    assert s1["bytes_deduplicated"] == 50_000
    assert s1["counts"]["inline_files"] == 1 and s1["counts"]["object_files"] == 3 and s1["entries"] == 5
    s2 = json.loads(cfsctl("build", root, tmp_path / "i2", "--digest-store", store, "--json").stdout)
    assert s2["bytes_stored"] == 0
    assert s2["bytes_deduplicated"] == 107_000
    assert s2["digest"] == s1["digest"]


def test_digest_independent_of_threads_and_print_digest_only(tmp_path):
    root = os.fsencode(tmp_path / "src")
    os.mkdir(root)
    materialize(root, [Spec(b"f%03d" % i, "file", size=(i * 4099) % 70000, seed=i) for i in range(200)])
    digests = {cfsctl("build", root, "--print-digest-only", "--threads", str(n)).stdout.strip() for n in (1, 2, 3)}
    assert len(digests) == 1
    cfsctl("build", root, tmp_path / "img")
    assert digests == {fsverity_digests([os.fsencode(tmp_path / "img")])[os.fsencode(tmp_path / "img")].encode()}


def test_help_documents_hardlinks():
    out = cfsctl("build", "--help").stdout.decode()
    assert "--hardlinks" in out and "--no-hardlinks" in out and "mkcomposefs 1.0" in out


def test_hardlinks_are_opt_in_and_no_hardlinks_is_the_default(tmp_path):
    """The default is mkcomposefs 1.0's image (every name its own inode); --hardlinks keeps them."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "a").write_bytes(os.urandom(5000))
    os.link(root / "a", root / "b")
    default, split, keep = (cfsctl("build", root, "--print-digest-only", *f).stdout for f in
                            ([], ["--no-hardlinks"], ["--hardlinks"]))
    assert default == split != keep


def test_unreadable_file_cli_error_names_path():
    with tree_for_nobody("cfs-cli-unreadable-") as root:
        secret = os.path.join(root, "secret")
        with open(secret, "wb") as f:
            f.write(b"s" * 1000)
        os.chmod(secret, 0)
        # Drop to nobody after start-up (the interpreter lives under /root); the CLI imports a
        # command's modules when it runs, so load those first.
        code = ("import os, sys; from composefs.cli import main; import composefs.cmd_build, composefs.build; "
                "os.setgid(65534); os.setuid(65534); "
                "sys.argv = ['cfsctl', 'build', sys.argv[1], '--print-digest-only']; main()")
        r = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, cwd="/")
        assert r.returncode != 0
        assert r.stderr.strip() == f"cfsctl: error: {secret}: Permission denied", r.stderr
