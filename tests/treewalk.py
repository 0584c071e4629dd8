# SPDX-License-Identifier: MIT OR Apache-2.0
"""Walking a mounted tree to compare two mounts of one image entry by entry (the kernel module,
the stock EROFS + overlayfs path, the FUSE daemon): names in readdir order, modes, owners, sizes,
times, nlink, hardlinks, symlink targets, rdev, every xattr and file contents, optionally the
probes only two kernel paths agree on (SEEK_DATA/SEEK_HOLE, O_DIRECT, st_blocks, d_off). Used by
the host tests (tests/test_fuse.py) and the guest tests (tests/guest/), which import it through
cfsimage."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import stat
import struct
from pathlib import Path

BLOCK = 4096

# What every path of the kernel agrees with FUSE on; blocks, blksize and the probes describe how
# a file is stored (sparse objects, the loop device), which FUSE does not reproduce.
NOT_FUSE = ("blocks", "blksize", "probes", "d_off")


def presented(w: dict, drop=NOT_FUSE) -> dict:
    """A walk() result without the fields in `drop`."""
    return {"links": w["links"],
            "entries": {p: {k: v for k, v in e.items() if k not in drop} for p, e in w["entries"].items()}}


def file_digest(path: Path, size: int) -> str:
    """sha256 of the first and last 16 KiB (whole file when small), or the error name."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            h.update(f.read(16384))
            if size > 32768:
                f.seek(size - 16384)
            h.update(f.read(16384))
    except OSError as e:
        return f"error:{e.errno}"
    return h.hexdigest()


def xattrs(path: Path) -> dict:
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return {"error": e.errno}
    for n in names:
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            out[n] = f"error:{e.errno}"
    return out


_libc = ctypes.CDLL(None, use_errno=True)
SYS_getdents64 = 217  # x86_64
SEEK_DATA, SEEK_HOLE = 3, 4


def getdents64(fd: int, bufsize: int = 32768, buf=None):
    """One getdents64(2) call: a list of (d_ino, d_off, d_type, name field as returned), where the
    name field is everything between d_type and the record's end (the name, its NUL, padding).
    `buf`, if given, is a writable buffer (e.g. an mmap) the kernel writes into."""
    if buf is None:
        buf = ctypes.create_string_buffer(bufsize)
        cbuf = buf
    else:
        cbuf = ctypes.c_char.from_buffer(buf)
    n = _libc.syscall(SYS_getdents64, fd, ctypes.byref(cbuf), bufsize)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    raw = bytes(buf[:n])
    del cbuf
    out, pos = [], 0
    while pos < n:
        ino, off, reclen, typ = struct.unpack_from("<QqHB", raw, pos)
        out.append((ino, off, typ, raw[pos + 19:pos + reclen]))
        pos += reclen
    return out


def dir_offsets(path: Path) -> list:
    """(name, d_off) of every entry, in getdents64 order, or the errno."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    out = []
    try:
        while True:
            ents = getdents64(fd, 4096)
            if not ents:
                return out
            out += [(f.split(b"\0")[0], off) for _, off, _, f in ents]
    except OSError as e:
        return out + [("error", e.errno)]
    finally:
        os.close(fd)


def file_probes(path: Path, size: int, odirect: bool = True) -> dict:
    """What a regular file shows beyond its bytes: the errno of a failing open, the SEEK_DATA /
    SEEK_HOLE map, st_blocks once opened, and O_DIRECT (open, an aligned and an unaligned read)."""
    out = {}
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return {"open": e.errno}
    try:
        segs, pos = [], 0
        while len(segs) < 32:
            try:
                d = os.lseek(fd, pos, SEEK_DATA)
                h = os.lseek(fd, d, SEEK_HOLE)
            except OSError as e:
                segs.append(("error", pos, e.errno))
                break
            segs.append((d, h))
            if h >= size:
                break
            pos = h
        out["seek"] = segs
        out["seek_end"] = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    out["blocks_after_open"] = os.lstat(path).st_blocks
    if not odirect:
        return out
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        out["odirect"] = ("open", e.errno)
        return out
    try:
        buf = mmap.mmap(-1, BLOCK)
        try:
            n = os.preadv(fd, [buf], 0)
            out["odirect"] = ("aligned", n, hashlib.sha256(buf[:n]).hexdigest())
        except OSError as e:
            out["odirect"] = ("aligned", e.errno)
        try:
            out["odirect_unaligned"] = len(os.pread(fd, 100, 1))
        except OSError as e:
            out["odirect_unaligned"] = e.errno
    finally:
        os.close(fd)
    return out


def walk(root: Path, contents: bool = True, probes: bool = False, odirect_limit: int | None = 40) -> dict:
    """Everything the two mounts must agree on, per path (relative bytes path); with probes, also
    file_probes() of every regular file and the d_off sequence of every directory. O_DIRECT is
    probed on the first `odirect_limit` regular files of each kind (data in the image or in an
    object; None: all): direct reads of a stock mount go to its loop device, slow under TCG."""
    odirect_left = {True: odirect_limit, False: odirect_limit}
    result = {}
    inodes: dict[int, list] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        p = Path(os.fsdecode(os.fsencode(root) + rel)) if rel else root
        st = os.lstat(p)
        e = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink,
             "blocks": None if stat.S_ISDIR(st.st_mode) else st.st_blocks,
             "mtime": st.st_mtime_ns, "ctime": st.st_ctime_ns, "atime": st.st_atime_ns,
             "blksize": st.st_blksize, "xattrs": xattrs(p)}
        if not stat.S_ISDIR(st.st_mode):
            e["size"] = st.st_size
            inodes.setdefault(st.st_ino, []).append(rel)
        if stat.S_ISLNK(st.st_mode):
            e["target"] = os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            e["rdev"] = st.st_rdev
        elif stat.S_ISREG(st.st_mode) and contents:
            e["content"] = file_digest(p, st.st_size)
            if probes:
                # a file whose data is in the image has no overlay xattrs to hide, so the kind
                # is told apart by st_blocks only once open; its size is a good enough guide
                kind = st.st_size <= 4096
                left = odirect_left[kind]
                e["probes"] = file_probes(p, st.st_size, odirect=left is None or left > 0)
                if left:
                    odirect_left[kind] = left - 1
        elif stat.S_ISDIR(st.st_mode):
            e["size"] = st.st_size
            if probes:
                e["d_off"] = dir_offsets(p)
            names = os.listdir(os.fsencode(p))
            e["entries"] = names
            for n in names:
                stack.append(rel + b"/" + n)
        result[rel] = e
    # hardlinks: the partition of non-directories into inodes
    links = sorted(sorted(v) for v in inodes.values())
    return {"entries": result, "links": links}


def walk_both(a: Path, b: Path, **kw) -> tuple[dict, dict]:
    """walk(a) and walk(b) at once, the first in a forked child: a walk is emulated Python, and
    the guest has two vCPUs."""
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(r)
            try:
                res = ("ok", walk(a, **kw))
            except BaseException as e:  # noqa: BLE001 - carried to the parent
                res = ("error", repr(e))
            with os.fdopen(w, "wb") as f:
                pickle.dump(res, f)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        wb = walk(b, **kw)
    finally:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
    kind, wa = pickle.loads(data)
    if kind != "ok":
        raise RuntimeError(f"walk of {a} failed: {wa}")
    return wa, wb


def differences(a: dict, b: dict, limit: int = 5) -> list:
    """Where two walk() results disagree: the hardlink partition, paths only one has, and the first
    `limit` entries that differ (path, a's, b's). Empty when they agree."""
    out = []
    if a["links"] != b["links"]:
        out.append(("links", a["links"], b["links"]))
    ka, kb = a["entries"].keys(), b["entries"].keys()
    if ka != kb:
        out.append(("paths", sorted(ka - kb)[:limit], sorted(kb - ka)[:limit]))
    diff = [(p, a["entries"][p], b["entries"][p]) for p in sorted(ka & kb) if a["entries"][p] != b["entries"][p]]
    return out + diff[:limit]


def inode_numbers(root: Path, drop: bool = False) -> dict:
    """Every path's st_ino; with `drop`, after dropping the kernel's caches (dentries and inodes
    forgotten, so a FUSE daemon is asked again)."""
    if drop:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for n in [b".", *dirnames, *filenames]:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, os.fsencode(root))] = os.lstat(p).st_ino
    return out
