# SPDX-License-Identifier: MIT OR Apache-2.0
"""Helpers shared by the directory-scan and object-store tests: make real trees on disk, read
them back with os.lstat/os.listxattr, and compute reference digests with `fsverity digest`."""

from __future__ import annotations

import contextlib
import os
import random
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field

import pytest

from composefs import _native

FSVERITY = "/usr/bin/fsverity"


@dataclass
class Spec:
    """One entry to create: kind is dir, file, hardlink, symlink, fifo, sock, chr, blk."""

    path: bytes  # relative, without leading slash
    kind: str
    size: int = 0
    seed: int = 0
    target: bytes = b""  # symlink target, or the path a hardlink points at
    rdev: tuple[int, int] = (0, 0)
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    perm: int | None = None
    owner: tuple[int, int] | None = None
    mtime_ns: int | None = None


def content(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def materialize(root: bytes, specs: list[Spec]) -> None:
    """Create the entries in order (parents before children), then set owners, modes, xattrs
    and mtimes (mtimes last, since creating children changes a directory's mtime)."""
    for s in specs:
        p = os.path.join(root, s.path)
        if s.kind == "dir":
            os.mkdir(p)
        elif s.kind == "file":
            with open(p, "wb") as f:
                f.write(content(s.size, s.seed))
        elif s.kind == "hardlink":
            os.link(os.path.join(root, s.target), p)
        elif s.kind == "symlink":
            os.symlink(s.target, p)
        elif s.kind == "fifo":
            os.mkfifo(p)
        elif s.kind == "sock":
            os.mknod(p, stat.S_IFSOCK | 0o644)
        elif s.kind in ("chr", "blk"):
            t = stat.S_IFCHR if s.kind == "chr" else stat.S_IFBLK
            os.mknod(p, t | 0o600, os.makedev(*s.rdev))
        else:
            raise ValueError(s.kind)
    for s in specs:
        p = os.path.join(root, s.path)
        if s.owner is not None:
            os.lchown(p, *s.owner)
        if s.perm is not None and s.kind != "symlink":
            os.chmod(p, s.perm)
        for k, v in s.xattrs:
            os.setxattr(p, k, v, follow_symlinks=False)
    for s in specs:
        if s.mtime_ns is not None:
            os.utime(os.path.join(root, s.path), ns=(s.mtime_ns, s.mtime_ns), follow_symlinks=False)


def source_paths(root: bytes) -> list[bytes]:
    """Every entry under root as an image path (b"/" for the root), without following links."""
    out = [b"/"]
    stack = [b""]
    while stack:
        rel = stack.pop()
        for ent in os.scandir(os.path.join(root, rel) if rel else root):
            r = rel + b"/" + ent.name if rel else ent.name
            out.append(b"/" + r)
            if ent.is_dir(follow_symlinks=False):
                stack.append(r)
    return out


def src(root: bytes, path: bytes) -> bytes:
    return root if path == b"/" else root + path


def fsverity_digests(files: list[bytes]) -> dict[bytes, str]:
    """Digests from fsverity-utils (`fsverity digest --compact`), in batches."""
    out: dict[bytes, str] = {}
    for i in range(0, len(files), 200):
        batch = files[i : i + 200]
        r = subprocess.run([FSVERITY, "digest", "--compact", *batch], capture_output=True, check=True)
        lines = r.stdout.split(b"\n")[: len(batch)]
        for f, line in zip(batch, lines):
            out[f] = line.decode().strip()
    return out


def check_scan(root: bytes, result: _native.ScanResult, *, no_hardlinks=False, skip_devices=False, skip_xattrs=False,
               user_xattrs=False, use_epoch=False) -> None:
    """Compare a scan's entries one by one with what the kernel says about the source."""
    entries = {e.path: e for e in result.entries}
    assert len(entries) == len(result.entries), "duplicate paths"
    want = source_paths(root)
    if skip_devices:
        want = [p for p in want if not (stat.S_ISCHR(os.lstat(src(root, p)).st_mode)
                                        or stat.S_ISBLK(os.lstat(src(root, p)).st_mode))]
    assert sorted(entries) == sorted(want)
    assert result.stats.entries == len(want)

    big = [src(root, p) for p, e in entries.items()
           if stat.S_ISREG(e.mode) and os.lstat(src(root, p)).st_size > 64]
    digests = fsverity_digests(big)
    by_inode: dict[int, list[bytes]] = {}
    by_source: dict[tuple[int, int], set[int]] = {}
    for path, e in entries.items():
        p = src(root, path)
        st = os.lstat(p)
        by_inode.setdefault(e.inode, []).append(path)
        by_source.setdefault((st.st_dev, st.st_ino), set()).add(e.inode)
        assert e.mode == st.st_mode, path
        assert (e.uid, e.gid) == (st.st_uid, st.st_gid), path
        want_mtime = (0, 0) if use_epoch else divmod(st.st_mtime_ns, 10**9)
        assert (e.mtime, e.mtime_nsec) == tuple(want_mtime), path
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            assert e.rdev == st.st_rdev, path
        else:
            assert e.rdev == 0, path
        if stat.S_ISLNK(st.st_mode):
            assert e.target == os.readlink(p), path
            assert e.size == len(e.target) == st.st_size, path
        else:
            assert e.target is None, path
        if stat.S_ISREG(st.st_mode):
            assert e.size == st.st_size, path
            if st.st_size == 0:
                assert (e.inline, e.digest, e.payload) == (None, None, None), path
            elif st.st_size <= 64:
                with open(p, "rb") as f:
                    assert e.inline == f.read(), path
                assert (e.digest, e.payload) == (None, None), path
            else:
                assert e.inline is None, path
                assert e.digest == digests[p], path
                assert e.payload == e.digest[:2] + "/" + e.digest[2:], path
        else:
            assert (e.inline, e.digest, e.payload) == (None, None, None), path
        if skip_xattrs:
            want_x = []
        else:
            want_x = [(k.encode(), os.getxattr(p, k, follow_symlinks=False))
                      for k in os.listxattr(p, follow_symlinks=False)
                      if not user_xattrs or k.startswith("user.")]
        assert sorted((x.key, x.value) for x in e.xattrs) == sorted(want_x), path
    # Link structure: preserved hardlinks share an inode; otherwise one inode per entry.
    for (dev, ino), ids in by_source.items():
        if no_hardlinks:
            pass
        else:
            assert len(ids) == 1, f"source inode {ino} split into {ids}"
    for ident, paths in by_inode.items():
        e = entries[paths[0]]
        if stat.S_ISDIR(e.mode):
            assert len(paths) == 1
            subdirs = sum(1 for q, f in entries.items() if stat.S_ISDIR(f.mode) and q != b"/"
                          and q.rsplit(b"/", 1)[0] == (paths[0] if paths[0] != b"/" else b""))
            assert e.nlink == 2 + subdirs, paths
        elif no_hardlinks:
            assert len(paths) == 1
            assert e.nlink == 1
        else:
            assert e.nlink == len(paths) == os.lstat(src(root, paths[0])).st_nlink, paths
    if no_hardlinks:
        assert result.stats.hardlinks == 0
        assert len(by_inode) == len(entries)


def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (mknod, trusted.* xattrs, chown)")


@contextlib.contextmanager
def tree_for_nobody(prefix: str):
    """Yield the path of an empty directory `src` that user nobody can reach (pytest's tmp_path
    is not), for tests that scan as nobody what root made unreadable; removed afterwards."""
    require_root()
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        os.chmod(tmp, 0o755)
        root = os.path.join(tmp, "src")
        os.mkdir(root)
        yield root
    finally:
        subprocess.run(["rm", "-rf", tmp], check=True)
