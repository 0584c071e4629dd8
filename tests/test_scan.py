# SPDX-License-Identifier: MIT OR Apache-2.0
"""Scanning real directory trees: every entry compared with os.lstat/os.listxattr of the source,
digests with fsverity-utils, options as mkcomposefs defines them, reproducibility, errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs import _native
from composefs.build import ScanOptions, scan_directory
from composefs.errors import CfsError
from scan_helpers import Spec, check_scan, materialize, require_root, tree_for_nobody

pytestmark = pytest.mark.root

ODD_NAMES = [b"with space", b"=eq", b"back\\slash", b"\xff\xfe-not-utf8", "ünï€ode".encode(), b"\x01ctl\x7f",
             b"n" * 255, b"-dash", b".hidden", b"..dots"]


def every_kind() -> list[Spec]:
    """A tree with every file type, the inline edges, hardlinks, xattrs and odd names."""
    specs = [
        Spec(b"d", "dir", perm=0o750, owner=(1000, 1001), mtime_ns=1_600_000_000_123_456_789,
             xattrs=[(b"user.dir", b"v"), (b"trusted.t", b"\x00\x01")]),
        Spec(b"d/sub", "dir", mtime_ns=5),
        Spec(b"d/sub/deeper", "dir"),
        Spec(b"empty", "file", size=0),
        Spec(b"one", "file", size=1, seed=1),
        Spec(b"i63", "file", size=63, seed=2),
        Spec(b"i64", "file", size=64, seed=3, xattrs=[(b"user.a", b"")]),
        Spec(b"o65", "file", size=65, seed=4),
        Spec(b"d/4095", "file", size=4095, seed=5),
        Spec(b"d/4096", "file", size=4096, seed=6),
        Spec(b"d/sub/4097", "file", size=4097, seed=7, perm=0o4755),
        Spec(b"d/sub/big", "file", size=3 * 1024 * 1024 + 17, seed=8, owner=(70000, 65536)),
        Spec(b"dup-of-o65", "file", size=65, seed=4),  # same content, separate inode
        Spec(b"d/hard-o65", "hardlink", target=b"o65"),
        Spec(b"d/sub/hard-i64", "hardlink", target=b"i64"),
        Spec(b"hard-empty", "hardlink", target=b"empty"),
        Spec(b"sym", "symlink", target=b"d/sub/big", xattrs=[(b"trusted.sym", b"x" * 300)]),
        Spec(b"dangling", "symlink", target=b"/nowhere/" + b"z" * 300),
        Spec(b"fifo", "fifo", xattrs=[(b"trusted.fifo", b"1")], mtime_ns=0),
        Spec(b"sock", "sock"),
        Spec(b"chr", "chr", rdev=(1, 3)),
        Spec(b"whiteout", "chr", rdev=(0, 0)),
        Spec(b"blk", "blk", rdev=(259, 70000)),
        Spec(b"hard-fifo", "hardlink", target=b"fifo"),
    ]
    for i, n in enumerate(ODD_NAMES):
        specs.append(Spec(b"d/sub/deeper/" + n, "file", size=[0, 10, 100][i % 3], seed=100 + i,
                          xattrs=[(b"user.name", n)]))
    return specs


@pytest.fixture
def tree_root(tmp_path):
    root = os.fsencode(tmp_path / "src")
    os.mkdir(root)
    return root


OPTION_TABLE = [
    {},
    {"no_hardlinks": True},
    {"skip_devices": True},
    {"skip_xattrs": True},
    {"user_xattrs": True},
    {"use_epoch": True},
    {"no_hardlinks": True, "skip_devices": True, "use_epoch": True, "user_xattrs": True},
]


@pytest.mark.parametrize("opts", OPTION_TABLE, ids=lambda o: ",".join(o) or "default")
def test_every_kind_matches_source(tree_root, opts):
    require_root()
    materialize(tree_root, every_kind())
    r = scan_directory(tree_root, ScanOptions(**opts), entries=True)
    check_scan(tree_root, r, **opts)
    s = r.stats
    assert s.inline_files >= 4 and s.object_files >= 5
    if not opts.get("no_hardlinks"):
        assert s.hardlinks == 4
        assert s.entries == s.inodes + s.hardlinks


def test_counts_of_every_kind(tree_root):
    require_root()
    materialize(tree_root, every_kind())
    s = scan_directory(tree_root).stats
    n_odd = len(ODD_NAMES)
    assert s.directories == 4
    assert s.symlinks == 2
    assert s.special_files == 5  # fifo, sock, chr, whiteout, blk
    # empty (+ its hardlink counted once), 4 odd names of size 0
    assert s.empty_files == 1 + (n_odd + 2) // 3
    # inline: one, i63, i64 and the size-10 odd names; objects: o65, dup, 4095, 4096, 4097, big
    # and the size-100 odd names
    assert s.inline_files == 3 + (n_odd + 1) // 3
    assert s.object_files == 6 + n_odd // 3
    # o65 and its duplicate share one digest
    assert s.distinct_objects == s.object_files - 1


names = st.binary(min_size=1, max_size=16).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))


@st.composite
def random_trees(draw):
    dirs = [b""]
    used: set[bytes] = set()
    files: list[bytes] = []
    specs: list[Spec] = []
    for _ in range(draw(st.integers(1, 30))):
        parent = draw(st.sampled_from(dirs))
        path = parent + b"/" + draw(names) if parent else draw(names)
        if path in used:
            continue
        used.add(path)
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink", "fifo", "sock", "chr", "blk",
                                     "hardlink"]))
        if kind == "hardlink" and not files:
            kind = "file"
        s = Spec(path, kind)
        if kind == "file":
            s.size = draw(st.one_of(st.sampled_from([0, 1, 63, 64, 65, 4096, 4097]), st.integers(0, 70000)))
            s.seed = draw(st.integers(0, 2**32))
            files.append(path)
        elif kind == "dir":
            dirs.append(path)
        elif kind == "symlink":
            s.target = draw(st.binary(min_size=1, max_size=200).filter(lambda b: b"\0" not in b))
        elif kind in ("chr", "blk"):
            s.rdev = (draw(st.integers(0, 4095)), draw(st.integers(0, 2**20 - 1)))
        elif kind == "hardlink":
            s.target = draw(st.sampled_from(files))
        keys = ["trusted.k", "trusted.overlay.x", "security.s"]
        if kind in ("file", "dir"):
            keys += ["user.u", "user.other"]
        for k in draw(st.lists(st.sampled_from(keys), unique=True, max_size=3)):
            s.xattrs.append((k.encode(), draw(st.binary(max_size=100))))
        if kind not in ("symlink", "hardlink") and draw(st.booleans()):
            s.perm = draw(st.integers(0, 0o7777)) | (0o700 if kind == "dir" else 0)
        if kind != "hardlink" and draw(st.booleans()):
            s.owner = (draw(st.integers(0, 2**32 - 2)), draw(st.integers(0, 2**32 - 2)))
        if kind != "hardlink" and draw(st.booleans()):
            s.mtime_ns = draw(st.integers(0, 2**34 * 10**9))
        specs.append(s)
    return specs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=random_trees(), opts=st.sampled_from(OPTION_TABLE), threads=st.sampled_from([0, 1, 3]))
def test_random_trees_match_source(specs, opts, threads):
    require_root()
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(os.fsencode(tmp), b"src")
        os.mkdir(root)
        materialize(root, specs)
        r = scan_directory(root, ScanOptions(threads=threads, **opts), entries=True)
        check_scan(root, r, **opts)


def test_same_result_whatever_the_thread_count(tree_root):
    require_root()
    specs = every_kind()
    for i in range(300):
        specs.append(Spec(b"d/sub/f%03d" % i, "file", size=(i * 997) % 20000, seed=i))
        if i % 7 == 0:
            specs.append(Spec(b"d/sub/h%03d" % i, "hardlink", target=b"d/sub/f%03d" % i))
    materialize(tree_root, specs)
    results = [scan_directory(tree_root, ScanOptions(threads=n), entries=True) for n in (1, 2, 4, 0)]
    for r in results[1:]:
        assert r.entries == results[0].entries
        assert r.stats == results[0].stats


def test_source_symlink_to_directory_is_followed(tree_root, tmp_path):
    materialize(tree_root, [Spec(b"f", "file", size=100, seed=1)])
    link = tmp_path / "link"
    os.symlink(tree_root, link)
    a = scan_directory(link, entries=True).entries
    b = scan_directory(tree_root, entries=True).entries
    assert a == b


def test_mount_points_are_descended_into(tree_root, tmp_path):
    """Like mkcomposefs, the walk crosses into filesystems mounted below the source."""
    require_root()
    mnt = os.path.join(tree_root, b"mnt")
    os.mkdir(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "cfs-scan-test", mnt], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    try:
        with open(os.path.join(mnt, b"inside"), "wb") as f:
            f.write(b"x" * 1000)
        res = scan_directory(tree_root, entries=True)
        check_scan(tree_root, res)
        assert b"/mnt/inside" in {e.path for e in res.entries}
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_progress_counter_and_line(tree_root):
    materialize(tree_root, [Spec(b"f%d" % i, "file", size=i * 1000, seed=i) for i in range(20)])
    counter = _native.ScanProgress()
    assert counter.snapshot().phase == "idle"
    r = _native.scan_directory(tree_root, progress=counter)
    snap = counter.snapshot()
    assert snap.phase == "done"
    assert snap.entries == r.stats.entries == 21
    assert snap.files_done == snap.files_total == 19  # f0 is empty, never opened
    assert snap.bytes_done == snap.bytes_total == sum(i * 1000 for i in range(20))
    assert repr(snap).startswith("ScanSnapshot(phase='done', entries=21, files_done=19")
    with pytest.raises(AttributeError):
        snap.entries = 0
    out = io.StringIO()  # not a terminal: the bar stays silent (drawn on a pty: test_progress.py)
    scan_directory(tree_root, progress=out)
    assert out.getvalue() == ""


# ---- errors name the path ----

def test_missing_source():
    with pytest.raises(CfsError) as e:
        scan_directory("/nonexistent/cfs-source")
    assert e.value.path == "/nonexistent/cfs-source"
    with pytest.raises(FileNotFoundError) as e2:
        _native.scan_directory("/nonexistent/cfs-source")
    assert e2.value.filename == "/nonexistent/cfs-source"


def test_source_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(CfsError, match="not a directory"):
        scan_directory(f)
    with pytest.raises(NotADirectoryError) as e:
        _native.scan_directory(str(f))
    assert e.value.filename == str(f)


def test_conflicting_options(tmp_path):
    with pytest.raises(CfsError):
        scan_directory(tmp_path, ScanOptions(skip_xattrs=True, user_xattrs=True))
    with pytest.raises(ValueError):
        _native.scan_directory(str(tmp_path), skip_xattrs=True, user_xattrs=True)


# Scan argv[1] as user nobody: print every entry's path and size, or the error's errno and
# file name (exit status 3).
UNPRIVILEGED_SCAN = """
import os, sys
from composefs import _native
os.setgid(65534); os.setuid(65534)
try:
    res = _native.scan_directory(sys.argv[1], entries=True)
except OSError as e:
    print(e.errno, e.filename, sep="\\n")
    sys.exit(3)
for e in res.entries:
    print(os.fsdecode(e.path), e.size)
"""


@pytest.mark.parametrize("what", ["file", "dir"])
def test_unreadable_entry_error_names_path(what):
    """A file (or directory) the scanning user may not read fails the scan with EACCES and its
    path; run as nobody in a child process, since root may read anything."""
    with tree_for_nobody("cfs-unreadable-") as root:
        specs = [Spec(b"ok", "file", size=1000, seed=1), Spec(b"d", "dir"),
                 Spec(b"d/secret", "file", size=500 if what == "file" else 0, seed=2),
                 Spec(b"d/locked", "dir")]
        materialize(os.fsencode(root), specs)
        bad = os.path.join(root, "d", "secret" if what == "file" else "locked")
        os.chmod(bad, 0)
        r = subprocess.run([sys.executable, "-c", UNPRIVILEGED_SCAN, root], capture_output=True, text=True)
        assert r.returncode == 3, r.stderr
        errno_, filename = r.stdout.split("\n")[:2]
        assert int(errno_) == 13
        assert filename == bad


def test_unreadable_empty_file_needs_no_read():
    """An empty file the scanning user may not open is still scanned (like mkcomposefs, nothing
    of it is read): the walk, which opens what readdir calls a regular file, falls back to lstat."""
    with tree_for_nobody("cfs-unreadable-") as root:
        materialize(os.fsencode(root), [Spec(b"ok", "file", size=1000, seed=1), Spec(b"empty", "file", size=0)])
        os.chmod(os.path.join(root, "empty"), 0)
        r = subprocess.run([sys.executable, "-c", UNPRIVILEGED_SCAN, root], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        listed = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())
        assert listed.get("/empty") == "0", r.stdout
        assert listed.get("/ok") == "1000", r.stdout


def test_deep_tree(tmp_path):
    """2000 nested directories (paths near PATH_MAX) are walked without overflowing a stack."""
    root = os.fsencode(tmp_path / "src")
    os.mkdir(root)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(2000):
            os.mkdir(b"a", dir_fd=fd)
            nfd = os.open(b"a", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"x" * 100)
    finally:
        os.close(fd)
    r = scan_directory(root, entries=True)
    assert r.stats.directories == 2001
    leaf = [e for e in r.entries if e.path.endswith(b"/leaf")]
    assert len(leaf) == 1 and leaf[0].path.count(b"/") == 2001 and leaf[0].digest
    _remove_chain(root)


FD_LIMIT_SCRIPT = """
import resource, sys
from composefs import _native
from composefs.build import scan_directory
soft, hard = (int(a) for a in sys.argv[2:4])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
if sys.argv[4] == "cli":
    _native.configure_process()
r = scan_directory(sys.argv[1].encode())
print(r.stats.directories, r.stats.regular_files, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize("soft,hard,policy,want", [(128, 128, "library", 128), (128, 4096, "library", 128),
                                                   (64, 4096, "cli", 4096)])
def test_open_files_bounded_by_depth(tmp_path, soft, hard, policy, want):
    """Files are closed before the walk descends: 40 levels of 31 files each, the subdirectory
    sorting last in its unit of 32 entries, fit in 128 descriptors (31 files held open per level
    would need over 1,200). The library leaves the process's limit alone; the CLI's process
    policy raises a low soft limit to the hard one."""
    d = tmp_path / "src"
    for _ in range(40):
        d.mkdir()
        for i in range(31):
            (d / f"f{i:02}").write_bytes(b"%d" % i * 100)
        d = d / "z"
    r = subprocess.run([sys.executable, "-c", FD_LIMIT_SCRIPT, str(tmp_path / "src"), str(soft), str(hard), policy],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dirs, files, raised = r.stdout.split()
    assert (int(dirs), int(files)) == (40, 40 * 31)
    assert int(raised) == want


def _remove_chain(root: bytes) -> None:
    """Remove root/a/a/.../leaf without recursion: pytest's own tmp_path cleanup (shutil.rmtree)
    recurses once per level and overflows Python's stack on 2000 levels."""
    fd = os.open(root, os.O_RDONLY)
    try:
        while os.path.isdir(os.path.join(root, b"a", b"a")):
            os.rename(b"a/a", b"b", src_dir_fd=fd, dst_dir_fd=fd)
            os.rmdir(b"a", dir_fd=fd)
            os.rename(b"b", b"a", src_dir_fd=fd, dst_dir_fd=fd)
        os.unlink(b"a/leaf", dir_fd=fd)
        os.rmdir(b"a", dir_fd=fd)
    finally:
        os.close(fd)
