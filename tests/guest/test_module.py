# SPDX-License-Identifier: MIT OR Apache-2.0
"""The `composefs` kernel module (kernel/) in the QEMU guest.

It must present exactly what the stock erofs+overlayfs mount presents for the same image, serve
contents from the object files (sharing their page cache), enforce fs-verity as asked, and survive
hostile images. Images come from our writer (`cfsctl build --from-dump`).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import cfsimage as ci
import guestutil

pytestmark = pytest.mark.skipif(os.environ.get("CFS_GUEST") == "1" and not ci.module_loaded(),
                                reason="the composefs module is not loaded in this guest")

# Every conformance dump is checked against the stock mount on every run (one of them holds
# times before 1970).
DUMPS = sorted(p.name[:-len(".dump.gz")] for p in ci.CONFORMANCE.glob("*.dump.gz"))


@pytest.fixture
def work(tmp_path):
    yield tmp_path
    # unmount anything left below tmp_path, deepest first
    mounts = [l.split()[1] for l in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(tmp_path))), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def _dmesg_problems(lines):
    bad = re.compile(r"BUG:|WARNING:|Oops|general protection|Call Trace:|KASAN|UBSAN|list_del corruption")
    return [l for l in lines if bad.search(l)]


# --- (a) the same tree as the stock mount ------------------------------------------------------
@pytest.mark.parametrize("name", DUMPS)
def test_same_tree_as_stock_overlayfs(work, name):
    dump = ci.CONFORMANCE / f"{name}.dump.gz"
    img = work / "image.cfs"
    ci.build_image(dump, img)
    objs = work / "objects"
    objs.mkdir()
    ci.make_objects(dump, objs)

    stock, mod = work / "stock", work / "mod"
    ci.mount_stock(img, work / "lower", stock, [objs])
    ci.mount_module(img, mod, [objs], verity_check=0)
    try:
        a, b = ci.walk_both(stock, mod, probes=True)
    finally:
        ci.umount(stock, work / "lower", mod)
    assert a["links"] == b["links"]
    assert a["entries"].keys() == b["entries"].keys()
    diffs = [(p, a["entries"][p], b["entries"][p]) for p in a["entries"]
             if a["entries"][p] != b["entries"][p]]
    assert not diffs[:5], f"{len(diffs)} entries differ, first: {diffs[:5]}"


def test_hardlinks_share_an_inode_and_whiteouts_are_hidden(work):
    dump = work / "t.dump"
    dump.write_text(
        "/ 4096 40755 3 0 0 0 1000.0 - - -\n"
        "/d 4096 40700 2 5 6 0 1000.0 - - - user.a=1\n"
        "/d/f 5 100644 2 0 0 0 1000.0 - hello -\n"
        "/g 0 @100644 1 0 0 0 0.0 /d/f - -\n"
        "/w 0 20000 1 0 0 0 1000.0 - - -\n"
    )
    img = work / "i.cfs"
    ci.build_image(dump, img)
    mnt = work / "m"
    ci.mount_module(img, mnt, [])
    try:
        assert os.stat(mnt / "d/f").st_ino == os.stat(mnt / "g").st_ino
        assert os.stat(mnt / "g").st_nlink == os.stat(mnt / "d/f").st_nlink
        assert (mnt / "g").read_bytes() == b"hello"
        root = sorted(os.listdir(mnt))
        assert "00" not in root and "ff" not in root, "root whiteouts must be hidden"
        assert not (mnt / "00").exists()
        # a whiteout in the tree becomes an empty file that shows trusted.overlay.whiteout
        assert os.getxattr(mnt / "w", "trusted.overlay.whiteout") == b""
        assert "trusted.overlay.whiteout" in os.listxattr(mnt / "w")
        # the parent of a whiteout is marked with escaped xattrs (shown unescaped); the root's
        # own overlay-internal opaque=y stays hidden
        assert os.getxattr(mnt, "trusted.overlay.opaque") == b"x"
        assert "trusted.overlay.whiteouts" in os.listxattr(mnt)
        with pytest.raises(OSError) as e:
            os.getxattr(mnt / "d", "trusted.overlay.opaque")
        assert e.value.errno == errno.ENODATA
        assert os.getxattr(mnt / "d", "user.a") == b"1"
    finally:
        ci.umount(mnt)


def test_show_options_and_statfs(work):
    dump = work / "t.dump"
    dump.write_text("/ 4096 40755 2 0 0 0 1000.0 - - -\n/a 3 100644 1 0 0 0 1000.0 - abc -\n")
    img = work / "i.cfs"
    ci.build_image(dump, img)
    mnt = work / "m"
    ci.mount_module(img, mnt, [work], verity_check=2)
    try:
        line = next(l for l in Path("/proc/mounts").read_text().splitlines()
                    if l.split()[1] == str(mnt))
        assert line.split()[2] == "composefs"
        assert line.split()[0] == str(img)
        opts = line.split()[3].split(",")
        assert "ro" in opts and f"basedir={work}" in opts and "verity_check=2" in opts
        sv = os.statvfs(mnt)
        assert sv.f_bsize == 4096 and sv.f_namemax == 255 and sv.f_bfree == 0
        with pytest.raises(OSError) as e:
            open(mnt / "a", "w")
        assert e.value.errno == errno.EROFS
    finally:
        ci.umount(mnt)


# --- (b) fs-verity ------------------------------------------------------------------------------
def _verity_setup(verity_tmp: Path, files: dict[str, bytes]):
    """Objects on the verity disk named by their digest, and a dump with those digests."""
    objs = verity_tmp / "objects"
    lines = ["/ 4096 40755 2 0 0 0 1000.0 - - -"]
    digests = {}
    for name, data in sorted(files.items()):
        tmp = verity_tmp / f"tmp-{name}"
        tmp.write_bytes(data)
        d = guestutil.fsverity_digest_userspace(tmp).split(":")[1]
        path = objs / d[:2] / d[2:]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(path)
        guestutil.fsverity_enable(path)
        digests[name] = d
        lines.append(f"/{name} {len(data)} 100644 1 0 0 0 1000.0 {d[:2]}/{d[2:]} - {d}")
    return objs, lines, digests


@pytest.fixture
def verity_image(verity_tmp, work):
    files = {"good": os.urandom(20000), "tampered": os.urandom(9000), "noverity": os.urandom(7000)}
    objs, lines, digests = _verity_setup(verity_tmp, files)
    # a file whose image entry records no digest
    plain = os.urandom(5000)
    nd = hashlib.sha256(plain).hexdigest()
    (objs / nd[:2]).mkdir(exist_ok=True)
    (objs / nd[:2] / nd[2:]).write_bytes(plain)
    lines.append(f"/nodigest 5000 100644 1 0 0 0 1000.0 {nd[:2]}/{nd[2:]} - -")
    dump = verity_tmp / "v.dump"
    dump.write_text("\n".join(sorted(lines, key=lambda l: l.split()[0])) + "\n")
    img = verity_tmp / "v.cfs"
    ci.build_image(dump, img)
    # tamper: the object is replaced by other (verity-enabled) content under the same name
    t = objs / digests["tampered"][:2] / digests["tampered"][2:]
    t.unlink()
    t.write_bytes(b"evil" * 2250)
    guestutil.fsverity_enable(t)
    # an object that lost its fs-verity (a plain copy)
    n = objs / digests["noverity"][:2] / digests["noverity"][2:]
    data = n.read_bytes()
    n.unlink()
    n.write_bytes(data)
    return {"img": img, "objs": objs, "files": files, "plain": plain, "work": work}


def _read(p: Path):
    try:
        return p.read_bytes()
    except OSError as e:
        return e.errno


@pytest.mark.parametrize("vc", [0, 1, 2])
def test_verity_check_levels(verity_image, vc):
    v = verity_image
    mnt = v["work"] / f"m{vc}"
    ci.mount_module(v["img"], mnt, [v["objs"]], verity_check=vc)
    try:
        assert _read(mnt / "good") == v["files"]["good"]
        if vc == 0:
            assert _read(mnt / "tampered") == b"evil" * 2250
            assert _read(mnt / "noverity") == v["files"]["noverity"]
        else:
            assert _read(mnt / "tampered") == errno.EIO
            assert _read(mnt / "noverity") == errno.EIO
        assert _read(mnt / "nodigest") == (errno.EIO if vc == 2 else v["plain"])
        # stat works whatever the verification says
        assert os.stat(mnt / "tampered").st_size == 9000
    finally:
        ci.umount(mnt)


def test_image_digest_option(verity_tmp, work):
    objs, lines, digests = _verity_setup(verity_tmp, {"f": os.urandom(10000)})
    dump = verity_tmp / "d.dump"
    dump.write_text("\n".join(lines) + "\n")
    img = verity_tmp / "d.cfs"
    ci.build_image(dump, img)
    unverified = work / "copy.cfs"
    shutil.copyfile(img, unverified)
    guestutil.fsverity_enable(img)
    right = guestutil.fsverity_measure(img).split(":")[1]
    wrong = ("0" if right[0] != "0" else "1") + right[1:]
    mnt = work / "m"
    r = ci.mount_module(img, mnt, [objs], digest=right, check=False)
    assert r.returncode == 0, r.stderr
    try:
        assert (mnt / "f").stat().st_size == 10000
        assert "verity_check=2" in next(l for l in Path("/proc/mounts").read_text().splitlines()
                                        if l.split()[1] == str(mnt))
        assert _read(mnt / "f") != errno.EIO
    finally:
        ci.umount(mnt)
    assert ci.mount_module(img, mnt, [objs], digest=wrong, check=False).returncode != 0
    assert ci.mount_module(unverified, mnt, [objs], digest=right, check=False).returncode != 0
    assert ci.mount_module(img, mnt, [objs], digest="abc", check=False).returncode != 0
    # absent digest=: mounts, verity_check defaults to 1
    r = ci.mount_module(img, mnt, [objs], check=False)
    assert r.returncode == 0, r.stderr
    ci.umount(mnt)


# --- basedirs and missing objects ---------------------------------------------------------------
def test_basedir_search_path_and_missing_object(work):
    a, b = work / "A", work / "B"
    lines = ["/ 4096 40755 2 0 0 0 1000.0 - - -"]
    contents = {}
    for i, where in enumerate(["A", "B", "AB", "none"]):
        data = f"object {i} ".encode() * 1000
        d = hashlib.sha256(data).hexdigest()
        contents[where] = data
        for base in (a, b):
            if base.name in where:
                p = base / d[:2] / d[2:]
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data if base is a else b"B-copy" * 10 + data[60:])
        lines.append(f"/{where} {len(data)} 100644 1 0 0 0 1000.0 {d[:2]}/{d[2:]} - -")
    dump = work / "b.dump"
    dump.write_text("\n".join(lines) + "\n")
    img = work / "b.cfs"
    ci.build_image(dump, img)
    mnt = work / "m"
    ci.mount_module(img, mnt, [a, b], verity_check=0)
    try:
        assert _read(mnt / "A") == contents["A"]
        assert _read(mnt / "B")[:60] == b"B-copy" * 10
        assert _read(mnt / "AB") == contents["AB"], "the first basedir holding the object wins"
        assert _read(mnt / "none") == errno.ENOENT, "a missing object is ENOENT, as in overlayfs"
        assert os.stat(mnt / "none").st_size == len(contents["none"])
    finally:
        ci.umount(mnt)


# --- (c) hostile images ---------------------------------------------------------------------------
FUZZ_DUMP = """/ 4096 40755 4 0 0 0 1000.0 - - - trusted.overlay.opaque=y user.shared=v
/a 4096 40755 3 1 2 0 1001.5 - - - user.shared=v
/a/b 4096 40700 2 70000 70001 0 1002.0 - - - security.x=y
/a/b/deep 11 100644 1 0 0 0 1000.0 - hello\\x20world - user.k=v
/a/link 6 120777 1 0 0 0 1000.0 /a/b/x - - user.shared=v
/c 8192 100644 2 0 0 0 1000.0 ab/cdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789 - - trusted.overlay.overlay.x=esc
/d 0 @100644 1 0 0 0 0.0 /c - -
/e 0 20644 1 0 0 1025 1000.0 - - -
/f 0 10644 1 0 0 0 1000.0 - - -
/g 4096 40755 2 0 0 0 1000.0 - - -
""" + "".join(f"/g/n{i:03d}{'x' * 200} 0 100644 1 0 0 0 1000.0 - - -\n" for i in range(40))


def _walk_tolerant(root: Path, limit: int = 2000) -> None:
    """Walk a possibly corrupt tree; errors are fine, hangs and oopses are not."""
    seen = 0
    stack = [str(root)]
    while stack and seen < limit:
        p = stack.pop()
        seen += 1
        try:
            st = os.lstat(p)
            os.listxattr(p, follow_symlinks=False)
            for n in os.listxattr(p, follow_symlinks=False):
                try:
                    os.getxattr(p, n, follow_symlinks=False)
                except OSError:
                    pass
            if os.path.islink(p):
                os.readlink(p)
            elif os.path.isdir(p):
                for n in os.listdir(p):
                    stack.append(os.path.join(p, n))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    f.read(8192)
        except OSError:
            pass


def _mutations(img: bytes, regions: dict, rng: random.Random):
    """Yield (description, mutated image) aimed at nids, offsets, name lengths, xattr counts,
    directory loops, plus truncations and random bit flips."""
    n = len(img)
    kinds = ["bitflip", "truncate", "inode", "dirent_nid", "dirent_nameoff", "loop",
             "xattr", "sb", "byte"]
    while True:
        kind = rng.choice(kinds)
        b = bytearray(img)
        if kind == "bitflip":
            for _ in range(rng.randint(1, 8)):
                o = rng.randrange(n)
                b[o] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            b = b[:rng.randrange(n)]
        elif kind == "inode":
            o = rng.choice(regions["inode"]) + rng.choice([0, 2, 4, 6, 8, 12, 16, 20, 24, 40, 48])
            width = rng.choice([1, 2, 4, 8])
            val = rng.choice([0, 1, 0xFF, 0xFFFF, 0xFFFFFFFF, 2**63, rng.getrandbits(64)])
            b[o:o + width] = (val & (2 ** (8 * width) - 1)).to_bytes(width, "little")
        elif kind in ("dirent_nid", "loop"):
            o = rng.choice(regions["dirent"])
            if kind == "loop":
                nid = rng.choice(regions["dir_nids"])
            else:
                nid = rng.choice([0, 1, 2**32, 2**63, rng.getrandbits(64), regions["root_nid"] + 1,
                                  rng.randrange(n // 32 + 10)])
            b[o:o + 8] = nid.to_bytes(8, "little")
        elif kind == "dirent_nameoff":
            o = rng.choice(regions["dirent"]) + rng.choice([8, 9, 10])
            b[o] = rng.randrange(256)
        elif kind == "xattr":
            o = rng.choice(regions["xattr"]) + rng.choice([0, 1, 2, 3])
            b[o] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif kind == "sb":
            o = 1024 + rng.choice([12, 14, 16, 40, 44, 80, 90])
            b[o] = rng.randrange(256)
        else:
            o = rng.randrange(1024, min(n, 65536))
            b[o] = rng.randrange(256)
        yield kind, bytes(b)


_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY = 1


def _sys_mount(src: Path, tgt: Path, opts: str) -> int:
    """mount(2) directly: exec'ing mount(8) per mutation is slow under emulation."""
    r = _libc.mount(os.fsencode(src), os.fsencode(tgt), b"composefs", MS_RDONLY, opts.encode())
    return 0 if r == 0 else ctypes.get_errno()


def _sys_umount(tgt: Path) -> int:
    return 0 if _libc.umount2(os.fsencode(tgt), 0) == 0 else ctypes.get_errno()


MS_BIND = 4096


def _sys_bind(src: Path, tgt: Path) -> int:
    r = _libc.mount(os.fsencode(src), os.fsencode(tgt), None, MS_BIND, None)
    return 0 if r == 0 else ctypes.get_errno()


def test_hostile_images_refuse_or_walk_cleanly(work, verity_tmp, capsys):
    """Mutated images mounted and walked; a quarter are mutated only after mounting (the image is
    rewritten under the mount), and the basedir layout varies: one basedir, a search path, the
    mount point itself as a basedir, and a bind mount of the mount placed under the basedir."""
    count = int(os.environ.get("CFS_FUZZ_COUNT", "1000"))
    dump = work / "f.dump"
    dump.write_text(FUZZ_DUMP)
    img = work / "f.cfs"
    ci.build_image(dump, img)
    objs = work / "objects"
    objs.mkdir()
    ci.make_objects(dump, objs)
    base = img.read_bytes()
    regions = ci.image_regions(base)
    assert regions["dirent"] and regions["xattr"] and len(regions["dir_nids"]) >= 3
    seed = int(os.environ.get("CFS_FUZZ_SEED", "1234"))
    rng = random.Random(seed)
    with capsys.disabled():  # in the run's output whatever the outcome
        print(f"\nfuzz: {count} mutations, seed {seed} (CFS_FUZZ_COUNT, CFS_FUZZ_SEED)")
    mark = guestutil.kmsg_mark()
    mnt = work / "m"
    mnt.mkdir()
    bindpoint = objs / "ab"  # the object directory of /c
    layouts = {"one": f"{objs}", "path": f"{work / 'nothing'}:{objs}", "mountpoint": f"{mnt}:{objs}",
               "bindloop": f"{objs}"}
    (work / "nothing").mkdir()  # an empty basedir first in the search path
    bad = verity_tmp / "bad.cfs"  # ext4: the module reads it through the page cache
    stats = {"refused": 0, "mounted": 0, "live": 0}
    t0 = time.monotonic()
    for i, (kind, data) in zip(range(count), _mutations(base, regions, rng)):
        live = rng.random() < 0.25
        layout = rng.choice(list(layouts))
        bad.write_bytes(base if live else data)
        if _sys_mount(bad, mnt, f"basedir={layouts[layout]},verity_check=0"):
            assert not live, f"mutation {i}: the unmodified image was refused"
            stats["refused"] += 1
            continue
        stats["mounted"] += 1
        bound = layout == "bindloop" and _sys_bind(mnt / "a", bindpoint) == 0
        try:
            if live:
                stats["live"] += 1
                with open(bad, "r+b") as f:
                    f.write(data)
                    f.truncate(len(data))
            _walk_tolerant(mnt)
        finally:
            if bound:
                _libc.umount2(os.fsencode(bindpoint), 2)  # MNT_DETACH
            err = _sys_umount(mnt)
            assert err == 0, f"mutation {i} ({kind}, {layout}): umount: {os.strerror(err)}"
    problems = _dmesg_problems(guestutil.kmsg_since(mark))
    with capsys.disabled():
        print(f"\nfuzz: {count} mutations (seed {seed}) in {time.monotonic() - t0:.0f}s: {stats}")
    assert not problems, problems[:10]
    assert stats["mounted"] > count // 4, stats


# --- (d) the rest ---------------------------------------------------------------------------------
def _simple_image(work: Path, size: int = 1 << 20, objdir: Path | None = None):
    data = hashlib.sha256(b"seed").digest() * (size // 32)
    d = hashlib.sha256(data).hexdigest()
    objs = (objdir or work) / "objects"
    (objs / d[:2]).mkdir(parents=True)
    (objs / d[:2] / d[2:]).write_bytes(data)
    dump = work / "s.dump"
    dump.write_text("/ 4096 40755 2 0 0 0 1000.0 - - -\n"
                    f"/big {size} 100644 1 0 0 0 1000.0 {d[:2]}/{d[2:]} - -\n"
                    "/small 4 100644 1 0 0 0 1000.0 - abcd -\n")
    img = work / "s.cfs"
    ci.build_image(dump, img)
    return img, objs, data, objs / d[:2] / d[2:]


def test_unmount_busy_then_clean(work):
    img, objs, data, _ = _simple_image(work)
    mnt = work / "m"
    ci.mount_module(img, mnt, [objs], verity_check=0)
    f = open(mnt / "big", "rb")
    g = open(mnt / "small", "rb")
    r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
    assert r.returncode != 0 and "busy" in r.stderr.lower(), r.stderr
    assert f.read() == data and g.read() == b"abcd"
    f.close()
    g.close()
    subprocess.run(["umount", str(mnt)], check=True)


def test_several_readers_at_once(work):
    img, objs, data, _ = _simple_image(work, 4 << 20)
    mnt = work / "m"
    ci.mount_module(img, mnt, [objs], verity_check=0)
    want = hashlib.sha256(data).hexdigest()
    results = []

    def reader(k):
        for _ in range(3):
            with open(mnt / "big", "rb") as f:
                if k % 2:
                    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
                    results.append(hashlib.sha256(m[:]).hexdigest())
                    m.close()
                else:
                    results.append(hashlib.sha256(f.read()).hexdigest())
            results.append((mnt / "small").read_bytes())

    try:
        threads = [threading.Thread(target=reader, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(want) == 18 and results.count(b"abcd") == 18
        # splice (sendfile) through the backing file as well
        out = work / "copy"
        with open(mnt / "big", "rb") as src, open(out, "wb") as dst:
            n = os.sendfile(dst.fileno(), src.fileno(), 0, len(data))
        assert n == len(data) and out.read_bytes() == data
    finally:
        ci.umount(mnt)


def _resident_pages(path: Path) -> int:
    """Pages of the file in the page cache (fincore: mmap + mincore)."""
    out = subprocess.run(["fincore", "-b", "-n", "-o", "PAGES", str(path)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0])


def test_page_cache_shared_with_the_object(work, verity_tmp):
    # objects on a disk file system (tmpfs pages cannot be dropped)
    img, objs, data, obj = _simple_image(work, 8 << 20, objdir=verity_tmp)
    m1, m2 = work / "m1", work / "m2"
    ci.mount_module(img, m1, [objs], verity_check=0)
    ci.mount_module(img, m2, [objs], verity_check=0)
    try:
        guestutil.drop_caches()
        assert _resident_pages(obj) == 0
        assert (m1 / "big").read_bytes() == data
        after_one = _resident_pages(obj)
        assert after_one == len(data) // 4096, "reading through the mount fills the object's cache"
        cached0 = _meminfo("Cached")
        assert (m2 / "big").read_bytes() == data
        assert (m1 / "big").read_bytes() == data
        # the second mount reads the same pages: no second copy
        assert _resident_pages(obj) == after_one
        assert _meminfo("Cached") - cached0 < len(data) // 1024 // 4
        # mmap through the mount maps the object's pages
        with open(m2 / "big", "rb") as f:
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            assert m[:64] == data[:64]
            m.close()
    finally:
        ci.umount(m1, m2)


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_zz_module_unload_and_reload(work):
    ko = next((m for m in os.environ.get("CFS_MODULES", "").split(":") if m.endswith("composefs.ko")),
              None)
    if not ko:
        pytest.skip("composefs.ko was not loaded from a file by the harness")
    img, objs, data, _ = _simple_image(work)
    mnt = work / "m"
    ci.mount_module(img, mnt, [objs], verity_check=0)
    assert subprocess.run(["rmmod", "composefs"], capture_output=True).returncode != 0, \
        "a mounted module must not unload"
    ci.umount(mnt)
    mark = guestutil.kmsg_mark()
    subprocess.run(["rmmod", "composefs"], check=True)
    assert not ci.module_loaded()
    subprocess.run(["insmod", ko], check=True)
    assert ci.module_loaded()
    ci.mount_module(img, mnt, [objs], verity_check=0)
    try:
        assert (mnt / "big").read_bytes() == data
    finally:
        ci.umount(mnt)
    assert not _dmesg_problems(guestutil.kmsg_since(mark))
