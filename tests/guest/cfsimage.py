# SPDX-License-Identifier: MIT OR Apache-2.0
"""Helpers for the kernel-module guest tests: building images and objects, mounting the module and
the stock erofs+overlayfs path, walking a mounted tree, and a minimal image parser that tells the
fuzzer where the interesting bytes (inodes, dirents, xattrs) are."""

from __future__ import annotations

import gzip
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


# --- walking: one copy for the host and guest tests, in tests/treewalk.py -----------------------
from treewalk import (SEEK_DATA, SEEK_HOLE, SYS_getdents64, dir_offsets, file_digest,  # noqa: E402,F401
                      file_probes, getdents64, walk, walk_both, xattrs)


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
