# SPDX-License-Identifier: MIT OR Apache-2.0
"""Helpers for the kernel-module guest tests: building images and objects, mounting the module and
the stock erofs+overlayfs path, walking a mounted tree, and a minimal image parser that tells the
fuzzer where the interesting bytes (inodes, dirents, xattrs) are."""

from __future__ import annotations

import ctypes
import gzip
import hashlib
import mmap
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import cfsrun

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = cfsrun.CONFORMANCE / "dumps"
BLOCK = 4096


def run(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=True, text=True, **kw)


# --- images -------------------------------------------------------------------------------------
def _cfsctl() -> list[str]:
    exe = Path(sys.executable).with_name("cfsctl")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "composefs.cli"]


def build_image(dump: Path, image: Path) -> None:
    """Our writer: `cfsctl build --from-dump DUMP IMAGE` (a gzipped dump is unpacked first)."""
    if dump.suffix == ".gz":
        plain = image.with_suffix(".dump")
        plain.write_bytes(gzip.decompress(dump.read_bytes()))
        dump = plain
    r = subprocess.run(_cfsctl() + ["build", "--from-dump", str(dump), str(image)],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"cfsctl build failed: {r.stderr.strip()}")


def parse_dump(dump: Path) -> list[dict]:
    """Enough of composefs-dump(5) to generate objects: path, size, mode, payload."""
    data = dump.read_bytes()
    if dump.suffix == ".gz":
        data = gzip.decompress(data)
    out = []
    for line in data.splitlines():
        f = line.split(b" ")
        if len(f) < 11:
            continue
        out.append({"path": unescape(f[0]), "size": int(f[1]), "mode": f[2].decode(),
                    "payload": None if f[8] == b"-" else unescape(f[8]),
                    "digest": None if f[10] == b"-" else f[10].decode()})
    return out


def unescape(b: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(b):
        c = b[i]
        if c == 0x5C and i + 1 < len(b):
            n = b[i + 1]
            if n == ord("x"):
                out.append(int(b[i + 2:i + 4], 16))
                i += 4
                continue
            out.append({ord("n"): 10, ord("r"): 13, ord("t"): 9}.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


def object_content(payload: bytes, size: int) -> bytes:
    """Deterministic content for an object of the given size: its first 32 KiB (all that walk()
    reads of a file up to 32 KiB, and its first 16 KiB beyond that); the rest is sparse."""
    return random.Random(payload).randbytes(min(size, 32768))


def make_objects(dump: Path, basedir: Path) -> None:
    """An object for every payload of the dump, sized as the file (sparse beyond 64 KiB)."""
    for e in parse_dump(dump):
        if not e["payload"] or e["mode"].startswith("@") or not stat.S_ISREG(int(e["mode"], 8)):
            continue
        p = basedir / os.fsdecode(e["payload"]).lstrip("/")
        if p.exists():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            f.write(object_content(e["payload"], e["size"]))
            f.truncate(e["size"])


# --- mounts -------------------------------------------------------------------------------------
def module_loaded() -> bool:
    return "composefs" in Path("/proc/filesystems").read_text().split()


def mount_module(image: Path, mnt: Path, basedirs, verity_check: int | None = None,
                 digest: str | None = None, check=True) -> subprocess.CompletedProcess:
    opts = []
    if basedirs:
        opts.append("basedir=" + ":".join(str(b) for b in basedirs))
    if verity_check is not None:
        opts.append(f"verity_check={verity_check}")
    if digest:
        opts.append(f"digest={digest}")
    mnt.mkdir(parents=True, exist_ok=True)
    # -i: the kernel itself, never a /sbin/mount.composefs helper
    cmd = ["mount", "-i", "-t", "composefs"] + (["-o", ",".join(opts)] if opts else []) + [image, mnt]
    return run(*cmd, check=check)


def mount_stock(image: Path, lower: Path, mnt: Path, basedirs, verity: str | None = None) -> None:
    """The stock path: EROFS from the image file (loop device as a fallback), then overlayfs."""
    lower.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(parents=True, exist_ok=True)
    if run("mount", "-t", "erofs", "-o", "ro", image, lower, check=False).returncode:
        run("mount", "-t", "erofs", "-o", "ro,loop", image, lower)
    opts = ["ro", "metacopy=on", "redirect_dir=on", f"lowerdir+={lower}"]
    opts += [f"datadir+={b}" for b in basedirs]
    if verity:
        opts.append(f"verity={verity}")
    run("mount", "-t", "overlay", "overlay", "-o", ",".join(opts), mnt)


def umount(*targets) -> None:
    for t in targets:
        subprocess.run(["umount", str(t)], capture_output=True)


# --- walking ------------------------------------------------------------------------------------
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


# --- a minimal parser, to aim the fuzzer --------------------------------------------------------
def image_regions(img: bytes) -> dict:
    """Offsets of fields worth corrupting: inode headers, dirents, xattr headers and entries."""
    u16 = lambda o: struct.unpack_from("<H", img, o)[0]
    u32 = lambda o: struct.unpack_from("<I", img, o)[0]
    u64 = lambda o: struct.unpack_from("<Q", img, o)[0]
    sb = 1024
    root = u16(sb + 14)
    meta = u32(sb + 40) * BLOCK
    xattr_base = u32(sb + 44) * BLOCK
    regions = {"inode": [], "dirent": [], "xattr": [], "root_nid": root, "dir_nids": []}
    seen, queue = set(), [root]
    while queue:
        nid = queue.pop(0)
        if nid in seen:
            continue
        seen.add(nid)
        off = meta + nid * 32
        fmt = u16(off)
        ext = fmt & 1
        isize = 64 if ext else 32
        icount = u16(off + 2)
        mode = u16(off + 4)
        size = u64(off + 8) if ext else u32(off + 8)
        iu = u32(off + 16)
        regions["inode"].append(off)
        xsize = 12 + 4 * (icount - 1) if icount else 0
        if xsize:
            x = off + isize
            regions["xattr"].append(x + 4)  # h_shared_count
            shared = img[x + 4]
            pos, end = x + 12 + 4 * shared, x + xsize
            while pos + 4 <= end:
                regions["xattr"].append(pos)
                pos += (4 + img[pos] + u16(pos + 2) + 3) & ~3
            for i in range(shared):
                regions["xattr"].append(xattr_base + 4 * u32(x + 12 + 4 * i))
        if stat.S_ISDIR(mode):
            regions["dir_nids"].append(nid)
            layout = (fmt >> 1) & 7
            nblocks = (size + BLOCK - 1) // BLOCK
            for b in range(nblocks):
                blen = min(BLOCK, size - b * BLOCK)
                if layout == 2 and b == nblocks - 1:
                    start = off + isize + xsize
                else:
                    start = (iu + b) * BLOCK
                n = u16(start + 8) // 12
                for i in range(n):
                    regions["dirent"].append(start + 12 * i)
                    child = u64(start + 12 * i)
                    if child not in seen:
                        queue.append(child)
    return regions
