# SPDX-License-Identifier: MIT OR Apache-2.0
"""The object store filled by a directory build: objects named by their fs-verity digest (checked
with fsverity-utils), contents equal to the sources, reuse counted, nothing temporary left over,
and a build killed with SIGKILL or racing a writer never leaves an object under a wrong name."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from composefs import _native
from composefs.build import ScanOptions, scan_directory
from scan_helpers import Spec, fsverity_digests, materialize

OBJECT_RE = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{62}$")


def store_files(store: str) -> tuple[list[str], list[str]]:
    """(object names "XX/rest", anything else) found in a store."""
    objects, other = [], []
    for name in os.listdir(store):
        p = os.path.join(store, name)
        if os.path.isdir(p) and re.fullmatch(r"[0-9a-f]{2}", name):
            for sub in os.listdir(p):
                (objects if OBJECT_RE.match(f"{name}/{sub}") else other).append(f"{name}/{sub}")
        else:
            other.append(name)
    return objects, other


def check_objects(store: str) -> list[str]:
    """Every object's name must be the fs-verity digest of its contents; returns the names."""
    objects, other = store_files(store)
    assert other == [], f"unexpected files in the store: {other}"
    paths = [os.path.join(store, o).encode() for o in objects]
    digests = fsverity_digests(paths)
    for o, p in zip(objects, paths):
        assert digests[p] == o.replace("/", ""), f"object {o} holds content of digest {digests[p]}"
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == 0o644 and stat.S_ISREG(st.st_mode)
    return objects


def make_source(root: bytes, n: int = 40) -> list[Spec]:
    specs = [Spec(b"d", "dir"), Spec(b"d/e", "dir")]
    for i in range(n):
        size = [0, 10, 64, 65, 4096, 100_000, 1_000_003][i % 7]
        specs.append(Spec(b"d/e/f%d" % i if i % 2 else b"f%d" % i, "file", size=size, seed=i % 7))
    specs.append(Spec(b"hard", "hardlink", target=b"f4"))
    specs.append(Spec(b"sym", "symlink", target=b"f4"))
    materialize(root, specs)
    return specs


@pytest.mark.parametrize("no_hardlinks", [False, True])
def test_objects_named_by_digest_with_source_content(tmp_path, no_hardlinks):
    root = os.fsencode(tmp_path / "src")
    os.mkdir(root)
    make_source(root)
    store = str(tmp_path / "objects")
    r = scan_directory(root, ScanOptions(no_hardlinks=no_hardlinks), store=store, entries=True)
    objects = check_objects(store)
    backed = [e for e in r.entries if e.digest]
    assert sorted(set(e.payload for e in backed)) == sorted(objects)
    for e in backed:
        with open(root + e.path, "rb") as a, open(os.path.join(store, e.payload), "rb") as b:
            assert a.read() == b.read()
    s, st = r.stats, r.store
    distinct = {e.digest: e.size for e in backed}
    assert st.objects_stored == len(distinct) == s.distinct_objects
    assert st.bytes_stored == sum(distinct.values())
    # Each distinct source inode is read once; those repeating a digest are reuses.
    read_once = {(e.digest, os.lstat(root + e.path).st_ino): e.size for e in backed}
    assert st.objects_stored + st.objects_reused == len(read_once)
    assert st.objects_reused > 0  # seeds repeat: same contents in several files

    # A second build reuses everything and stores nothing.
    r2 = scan_directory(root, ScanOptions(no_hardlinks=no_hardlinks), store=store, entries=True)
    st2 = r2.store
    assert st2.objects_stored == st2.bytes_stored == 0
    assert st2.objects_reused == len(read_once)
    assert st2.bytes_reused == sum(read_once.values())
    assert r2.entries == r.entries
    assert check_objects(store) == objects


def test_store_insert_single_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(os.urandom(300_000))
    store = tmp_path / "s"
    got = _native.store_insert(str(store), str(f))
    d = got.digest
    assert (got.size, got.action) == (300_000, "stored")
    assert fsverity_digests([str(f).encode()])[str(f).encode()] == d
    assert _native.store_insert(str(store), str(f)).action == "reused"
    assert check_objects(str(store)) == [d[:2] + "/" + d[2:]]


def test_stale_temporary_of_a_dead_build_is_removed(tmp_path):
    root = os.fsencode(tmp_path / "src")
    os.mkdir(root)
    make_source(root, 10)
    store = tmp_path / "objects"
    store.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (store / f".tmp-{dead.pid}-0").write_bytes(b"half-written junk")
    live = store / f".tmp-{os.getpid()}-5"  # a live process's temporary stays
    live.write_bytes(b"in progress")
    r = scan_directory(root, store=store)
    assert r.store.temporaries_removed == 1
    assert not (store / f".tmp-{dead.pid}-0").exists()
    assert live.exists()
    live.unlink()
    check_objects(str(store))


KILLED_BUILD = """
import sys
from composefs import _native
_native.scan_directory(sys.argv[1], store=sys.argv[2], threads=1)
"""


@pytest.mark.slow
def test_build_killed_mid_way_leaves_only_correct_objects(tmp_path):
    root = os.fsencode(tmp_path / "src")
    os.mkdir(root)
    n = 1500
    materialize(root, [Spec(b"f%04d" % i, "file", size=65_536 + 997 * (i % 97), seed=i) for i in range(n)])
    store = str(tmp_path / "objects")
    p = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, root, store], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if os.path.isdir(store) and len(os.listdir(store)) >= 4:
            break
        time.sleep(0.001)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read()
    objects = check_objects(store)
    assert 0 < len(objects) < n, "the build was not interrupted mid-way"
    # The next build completes the store, reusing what the killed one stored.
    r = scan_directory(root, store=store)
    assert r.store.objects_reused >= len(objects) - 4  # at most a few in flight were lost
    assert r.store.objects_stored + r.store.objects_reused == n
    assert len(check_objects(store)) == n


def test_source_rewritten_during_build_never_misnames_an_object(tmp_path):
    """A writer keeps rewriting a file in place while builds run: each build either stores a
    consistent snapshot or fails naming the file (EAGAIN); no object ever has a wrong name."""
    root = tmp_path / "src"
    root.mkdir()
    victim = root / "victim"
    a, b = b"A" * (4 << 20), b"B" * (4 << 20)
    victim.write_bytes(a)
    for i in range(5):
        (root / f"other{i}").write_bytes(os.urandom(100_000))
    store = str(tmp_path / "objects")
    stop = threading.Event()

    def writer():
        with open(victim, "r+b", buffering=0) as f:
            k = 0
            while not stop.is_set():
                f.seek((k * 65536) % len(a))
                f.write((a if (k // 64) % 2 else b)[:65536])  # alternate every pass
                k += 1

    t = threading.Thread(target=writer)
    t.start()
    outcomes = {"ok": 0, "changed": 0}
    try:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                scan_directory(root, store=store)
                outcomes["ok"] += 1
            except OSError as e:
                assert e.errno == 11 and e.filename == str(victim), e
                outcomes["changed"] += 1
    finally:
        stop.set()
        t.join()
    assert sum(outcomes.values()) > 0
    check_objects(store)


def test_store_path_that_is_a_file_is_an_error(tmp_path):
    root = os.fsencode(tmp_path / "src")
    os.mkdir(root)
    make_source(root, 8)
    bad = tmp_path / "notadir"
    bad.write_bytes(b"")
    with pytest.raises(OSError) as e:
        scan_directory(root, store=bad)
    assert e.value.filename == str(bad)


def test_store_insert_many_matches_single_inserts(tmp_path):
    files = []
    for i, size in enumerate([65, 4096, 4097, 300_000, 5000, 5000]):
        f = tmp_path / f"f{i}"
        f.write_bytes(os.urandom(size) if i != 5 else (tmp_path / "f4").read_bytes())  # f5 = f4
        files.append(str(f))
    got = _native.store_insert_many(str(tmp_path / "many"), files)
    one = [_native.store_insert(str(tmp_path / "one"), f) for f in files]
    assert [(o.digest, o.size) for o in got] == [(o.digest, o.size) for o in one]  # in path order
    assert [o.action for o in got].count("reused") == 1  # the duplicate, whichever came second
    assert check_objects(str(tmp_path / "many")) == check_objects(str(tmp_path / "one"))
    assert _native.store_insert_many(str(tmp_path / "many"), []) == []
    with pytest.raises(OSError) as e:
        _native.store_insert_many(str(tmp_path / "many"), files[:2] + [str(tmp_path / "missing")])
    assert e.value.filename == str(tmp_path / "missing")
