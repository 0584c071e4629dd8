# SPDX-License-Identifier: MIT OR Apache-2.0
"""The `composefs` module against the cases of the independent review (issue #19): basedirs that
lead back into a composefs mount, an image rewritten while it is mounted, times before 1970 and
far in the future, and the stock path's exact answers (errno, SEEK_DATA/SEEK_HOLE, O_DIRECT,
d_off, st_blocks) on a generated tree. The stock erofs+overlayfs mount is the reference.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cfsimage as ci
import guestutil

pytestmark = pytest.mark.skipif(os.environ.get("CFS_GUEST") == "1" and not ci.module_loaded(),
                                reason="the composefs module is not loaded in this guest")

HEX = "cdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"  # 62 digits
OBJ = f"ab/{HEX}"


@pytest.fixture
def work(tmp_path):
    yield tmp_path
    mounts = [l.split()[1] for l in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(tmp_path))), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def _errno_of_read(p: Path):
    try:
        return p.read_bytes()
    except OSError as e:
        return e.errno


# --- 1. object lookup never re-enters a composefs mount -----------------------------------------
LOOP_DUMP = ("/ 4096 40755 3 0 0 0 1000.0 - - -\n"
             "/ab 4096 40755 2 0 0 0 1000.0 - - -\n"
             f"/ab/{HEX} 100 100644 1 0 0 0 1000.0 {OBJ} - -\n"
             f"/f 100 100644 1 0 0 0 1000.0 {OBJ} - -\n")


def _loop_image(work: Path) -> Path:
    dump = work / "loop.dump"
    dump.write_text(LOOP_DUMP)
    img = work / "loop.cfs"
    ci.build_image(dump, img)
    return img


def _bind(src: Path, dst: Path) -> None:
    guestutil.run("mount", "--bind", src, dst)


@pytest.mark.parametrize("path", ["module", "stock"])
def test_basedir_bind_mount_of_the_same_mount_is_not_followed(work, path):
    """The review's oops: the object path leads, through a bind mount placed under the basedir
    after mounting, to a file of the same mount; opening it recursed until the stack overflowed."""
    img = _loop_image(work)
    base = work / "base"
    (base / "ab").mkdir(parents=True)
    mnt = work / "m"
    if path == "module":
        ci.mount_module(img, mnt, [base], verity_check=0)
    else:
        ci.mount_stock(img, work / "lower", mnt, [base])
    _bind(mnt / "ab", base / "ab")
    assert (base / "ab" / HEX).exists(), "the bind mount is in place"
    mark = guestutil.kmsg_mark()
    assert _errno_of_read(mnt / "f") == errno.ENOENT
    assert _errno_of_read(mnt / "ab" / HEX) == errno.ENOENT
    assert not [l for l in guestutil.kmsg_since(mark) if "BUG" in l or "Oops" in l]


@pytest.mark.parametrize("path", ["module", "stock"])
def test_basedir_loop_through_two_mounts(work, path):
    img = _loop_image(work)
    b1, b2 = work / "b1", work / "b2"
    (b1 / "ab").mkdir(parents=True)
    (b2 / "ab").mkdir(parents=True)
    m1, m2 = work / "m1", work / "m2"
    if path == "module":
        ci.mount_module(img, m1, [b1], verity_check=0)
        ci.mount_module(img, m2, [b2], verity_check=0)
    else:
        ci.mount_stock(img, work / "l1", m1, [b1])
        ci.mount_stock(img, work / "l2", m2, [b2])
    _bind(m2 / "ab", b1 / "ab")
    _bind(m1 / "ab", b2 / "ab")
    assert _errno_of_read(m1 / "f") == errno.ENOENT
    assert _errno_of_read(m2 / "f") == errno.ENOENT


@pytest.mark.parametrize("path", ["module", "stock"])
def test_basedir_that_is_the_mount_point(work, path):
    """basedir=X, mounted on X: objects come from what X held before the mount, never from the
    mount itself."""
    img = _loop_image(work)
    x = work / "x"
    (x / "ab").mkdir(parents=True)
    data = b"under the mount point " * 5
    (x / OBJ).write_bytes(data[:100])
    if path == "module":
        ci.mount_module(img, x, [x], verity_check=0)
    else:
        ci.mount_stock(img, work / "lower", x, [x])
    assert (x / "f").read_bytes() == data[:100]
    assert (x / "ab" / HEX).read_bytes() == data[:100]


def test_stacking_depth_is_bounded(work):
    """A composefs mount as basedir stacks; a third level is refused (FILESYSTEM_MAX_STACK_DEPTH)."""
    img = _loop_image(work)
    base = work / "base"
    (base / "ab").mkdir(parents=True)
    (base / OBJ).write_bytes(b"o" * 100)
    m1, m2, m3 = work / "m1", work / "m2", work / "m3"
    ci.mount_module(img, m1, [base], verity_check=0)
    ci.mount_module(img, m2, [m1], verity_check=0)
    assert (m2 / "f").read_bytes() == b"o" * 100
    assert ci.mount_module(img, m3, [m2], verity_check=0, check=False).returncode != 0


# --- 2. an image rewritten while mounted ---------------------------------------------------------
NAMES = [f"entry-{i:03d}-{'n' * (i % 17)}" for i in range(100)]  # one 3 KiB block, not inline
XVAL = b"A" * 40


def _race_dump() -> str:
    lines = ["/ 4096 40755 3 0 0 0 1000.0 - - -", "/d 4096 40755 2 0 0 0 1000.0 - - -"]
    lines += [f"/d/{n} 0 100644 1 0 0 0 1000.0 - - -" for n in NAMES]
    lines.append(f"/x 5 100644 1 0 0 0 1000.0 - hello - user.v={XVAL.decode()}")
    return "\n".join(lines) + "\n"


def _dir_block(img: bytes) -> tuple[int, list[int]]:
    """Offset of /d's (only) dirent block and the offsets of its names, in dirent order."""
    names = sorted([b".", b".."] + [n.encode() for n in NAMES])
    at = img.index(names[2] + names[3])
    start = at - at % ci.BLOCK
    n = int.from_bytes(img[start + 8:start + 10], "little") // 12
    assert n == len(names)
    offs = [int.from_bytes(img[start + 12 * i + 8:start + 12 * i + 10], "little") for i in range(n)]
    assert img[start + offs[2]:start + offs[3]] == names[2]
    return start, offs


WRITER = r"""
import mmap, os, random, sys, time
path, start, offs, xoff, secs = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, 0)
rng = random.Random(7)
orig = bytes(m[start:start + 4096])
xorig = bytes(m[xoff:xoff + 40])
n = len(offs)
end = time.monotonic() + secs
flips = 0
while time.monotonic() < end:
    for _ in range(200):
        k = rng.randrange(2, n - 1)
        kind = rng.randrange(5)
        hold = rng.randrange(30)
        if kind == 0:      # a NUL inside a name
            o = start + offs[k] + 1
            m[o] = 0
            for _ in range(hold): pass
            m[o] = orig[offs[k] + 1]
        elif kind == 1:    # a '/' inside a name
            o = start + offs[k] + 1
            m[o] = 0x2f
            for _ in range(hold): pass
            m[o] = orig[offs[k] + 1]
        elif kind == 2:    # an empty name: nameoff[k] = nameoff[k + 1]
            o = start + 12 * k + 8
            m[o:o + 2] = offs[k + 1].to_bytes(2, "little")
            for _ in range(hold): pass
            m[o:o + 2] = orig[12 * k + 8:12 * k + 10]
        elif kind == 3:    # the last name starts past the block
            o = start + 12 * (n - 1) + 8
            m[o:o + 2] = (0xfff0).to_bytes(2, "little")
            for _ in range(hold): pass
            m[o:o + 2] = orig[12 * (n - 1) + 8:12 * (n - 1) + 10]
        else:              # the xattr value changes
            m[xoff:xoff + 40] = b"B" * 40
            for _ in range(hold): pass
            m[xoff:xoff + 40] = xorig
        flips += 1
m[start:start + 4096] = orig
m[xoff:xoff + 40] = xorig
print(flips)
"""


def test_image_rewritten_while_mounted(verity_tmp, work, capsys):
    """A writer flips directory fields (names with NUL or '/', empty names, a name past the
    block) and an xattr value of the mounted image in a loop, on the second vCPU, while getdents64,
    lookups, getxattr and reads run: every name returned must be one the unmodified block holds (the
    modified blocks are all invalid) with the length its record says, every error EUCLEAN, every
    xattr value 40 bytes of A or B."""
    dump = work / "r.dump"
    dump.write_text(_race_dump())
    img = verity_tmp / "r.cfs"  # ext4: the module reads it through its page cache
    ci.build_image(dump, img)
    data = img.read_bytes()
    start, offs = _dir_block(data)
    xoff = data.index(XVAL)
    allowed = {b".", b".."} | {n.encode() for n in NAMES}
    mnt = work / "m"
    ci.mount_module(img, mnt, [], verity_check=0)
    secs = float(os.environ.get("CFS_RACE_SECONDS", "12"))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(img), str(start), repr(offs),
                               str(xoff), str(secs)], stdout=subprocess.PIPE, text=True)
    bad: list = []
    counts = {"getdents": 0, "names": 0, "euclean": 0, "lookups": 0, "xattrs": 0}
    stop = threading.Event()

    # getdents64 writes into a private mapping of a file on the host root (9p in the guest) whose
    # pages are dropped before each call: the first name copied out faults and waits for 9p, a
    # pause between the module's validation of the block and its use of it, as a busy machine
    # would make at random
    src = open(ci.REPO / "kernel" / "image.c", "rb")
    faulting = mmap.mmap(src.fileno(), 8192, flags=mmap.MAP_PRIVATE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def lister():
        fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
        try:
            while not stop.is_set():
                os.lseek(fd, 0, os.SEEK_SET)
                while True:
                    faulting.madvise(mmap.MADV_DONTNEED)
                    os.posix_fadvise(src.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    try:
                        ents = ci.getdents64(fd, 8192, faulting)
                    except OSError as e:
                        if e.errno != errno.EUCLEAN:
                            bad.append(("getdents errno", e.errno))
                        counts["euclean"] += 1
                        break
                    counts["getdents"] += 1
                    if not ents:
                        break
                    for _, _, _, field in ents:
                        # the record's length says how long the name was (a NUL inside it
                        # shows as a short name in a long record); padding is the buffer's
                        name = field.partition(b"\0")[0]
                        counts["names"] += 1
                        if name not in allowed or not len(field) - 8 < len(name) + 1 <= len(field):
                            bad.append(("name", field))
        finally:
            os.close(fd)

    def prober():
        i = 0
        while not stop.is_set():
            i += 1
            try:
                os.stat(mnt / "d" / f"missing-{i}")
                bad.append(("lookup found", i))
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EUCLEAN):
                    bad.append(("lookup errno", e.errno))
            counts["lookups"] += 1
            try:
                v = os.getxattr(mnt / "x", "user.v")
                if len(v) != 40 or v.strip(b"AB"):
                    bad.append(("xattr", v))
            except OSError as e:
                if e.errno != errno.EUCLEAN:
                    bad.append(("xattr errno", e.errno))
            counts["xattrs"] += 1
            if (mnt / "x").read_bytes() != b"hello":
                bad.append(("read", i))

    mark = guestutil.kmsg_mark()
    threads = [threading.Thread(target=lister), threading.Thread(target=prober)]
    for t in threads:
        t.start()
    flips = writer.communicate(timeout=secs * 20 + 120)[0].strip()
    stop.set()
    for t in threads:
        t.join()
    with capsys.disabled():
        print(f"\nrace: {flips} flips in {secs:.0f}s, {counts}")
    ci.umount(mnt)
    faulting.close()
    src.close()
    assert writer.returncode == 0
    assert not bad, bad[:10]
    assert counts["names"] > 1000 and int(flips) > 1000, (flips, counts)
    assert not [l for l in guestutil.kmsg_since(mark) if "BUG" in l or "Oops" in l]


# --- 3. times before 1970 and far in the future ----------------------------------------------------
TIMES_DUMP = ("/ 4096 40755 2 0 0 0 -86400.500000000 - - -\n"
              "/epoch 0 100644 1 0 0 0 0.0 - - -\n"
              "/future 3 100644 1 0 0 0 32503680000.999999999 - abc -\n"
              "/old 5 100644 1 0 0 0 -2000000000.250000000 - hello -\n"
              "/old-dir 4096 40755 2 0 0 0 -1.0 - - -\n")
WANT_MTIME_NS = {b"": -86400 * 10**9 + 500000000, b"/epoch": 0,
                 b"/future": 32503680000 * 10**9 + 999999999,
                 b"/old": -2000000000 * 10**9 + 250000000, b"/old-dir": -10**9}


def _builders():
    yield "cfsctl"
    yield pytest.param("mkcomposefs", marks=pytest.mark.skipif(
        not shutil.which("mkcomposefs"), reason="no reference mkcomposefs in this guest"))


@pytest.mark.parametrize("builder", list(_builders()))
def test_times_before_1970_and_far_future(work, builder):
    dump = work / "t.dump"
    dump.write_text(TIMES_DUMP)
    img = work / "t.cfs"
    if builder == "cfsctl":
        ci.build_image(dump, img)
    else:
        guestutil.run("mkcomposefs", "--from-file", dump, img)
    stock, mod = work / "stock", work / "mod"
    objs = work / "objects"  # overlayfs wants a second layer; the tree needs no object
    objs.mkdir()
    ci.mount_stock(img, work / "lower", stock, [objs])
    r = ci.mount_module(img, mod, [objs], verity_check=0, check=False)
    assert r.returncode == 0, f"a valid image with times before 1970 is refused: {r.stderr}"
    try:
        a, b = ci.walk(stock), ci.walk(mod)
        got = {p: e["mtime"] for p, e in b["entries"].items()}
    finally:
        ci.umount(stock, work / "lower", mod)
    assert a == b
    assert got == WANT_MTIME_NS


# --- 4. the stock path's exact answers on a generated tree ---------------------------------------
def test_generated_tree_same_answers_as_stock(work):
    """Errno of every failing call (missing objects, objects that are directories, symlinks, fifos),
    SEEK_DATA/SEEK_HOLE maps of sparse objects, O_DIRECT on inline and object-backed files, d_off
    sequences (the root and a directory spanning blocks), st_blocks before and after open."""
    objs = work / "objects"
    lines = ["/ 4096 40755 4 0 0 0 1000.0 - - -",
             "/big 4096 40755 2 0 0 0 1000.0 - - -",
             "/files 4096 40755 2 0 0 0 1000.0 - - -"]
    lines += [f"/big/{'n' * 150}{i:04d} 0 100644 1 0 0 0 1000.0 - - -" for i in range(60)]
    files = {}
    for i, kind in enumerate(["sparse", "dense", "missing", "isdir", "symlink", "fifo", "empty"]):
        d = hashlib.sha256(kind.encode()).hexdigest()
        p = objs / d[:2] / d[2:]
        p.parent.mkdir(parents=True, exist_ok=True)
        size = 3 << 20
        if kind == "sparse":
            with open(p, "wb") as f:
                f.seek(1 << 20)
                f.write(os.urandom(8192))
                f.truncate(size)
        elif kind == "dense":
            p.write_bytes(os.urandom(size))
        elif kind == "isdir":
            p.mkdir()
        elif kind == "symlink":
            os.symlink(objs / "nowhere", p)
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "empty":
            p.write_bytes(b"")
        files[kind] = d
        lines.append(f"/files/{kind} {size} 100644 1 0 0 0 1000.0 {d[:2]}/{d[2:]} - -")
    lines += ["/files/inline 40 100644 1 0 0 0 1000.0 - " + "x" * 40 + " -",
              "/files/w 0 20000 1 0 0 0 1000.0 - - -"]
    dump = work / "g.dump"
    dump.write_text("\n".join(sorted(lines, key=lambda l: l.split()[0])) + "\n")
    img = work / "g.cfs"
    ci.build_image(dump, img)
    stock, mod = work / "stock", work / "mod"
    ci.mount_stock(img, work / "lower", stock, [objs])
    ci.mount_module(img, mod, [objs], verity_check=0)
    try:
        a, b = ci.walk_both(stock, mod, probes=True, odirect_limit=None)
    finally:
        ci.umount(stock, work / "lower", mod)
    diffs = {p: (a["entries"][p], b["entries"].get(p)) for p in a["entries"]
             if a["entries"][p] != b["entries"].get(p)}
    assert not diffs, diffs
    assert a["entries"].keys() == b["entries"].keys()
    # what the comparison covered
    probes = {p.rsplit(b"/", 1)[-1].decode(): e.get("probes") for p, e in b["entries"].items()
              if p.startswith(b"/files/")}
    for kind in ("missing", "isdir", "symlink", "fifo"):
        assert probes[kind] == {"open": errno.ENOENT}, (kind, probes[kind])
    assert len(probes["sparse"]["seek"]) >= 1 and probes["sparse"]["seek"][0][0] >= 1 << 20
    assert probes["dense"]["blocks_after_open"] >= (3 << 20) // 512
    assert probes["inline"]["odirect"][0] == "aligned"
    assert len(b["entries"][b"/big"]["d_off"]) == 62
