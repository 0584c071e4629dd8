# SPDX-License-Identifier: MIT OR Apache-2.0
"""Small helpers for the guest tests (fs-verity, mounts, kernel log). Guest only: root, real kernel."""

from __future__ import annotations

import fcntl
import functools
import os
import re
import struct
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

BLOCK = 4096


def run(*cmd: str | os.PathLike, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=True, text=True, **kw)


def fsverity_enable(path: os.PathLike, *extra: str) -> None:
    run("fsverity", "enable", path, *extra)


def fsverity_measure(path: os.PathLike) -> str:
    """The kernel's digest of a verity file, as 'sha256:HEX' (FS_IOC_MEASURE_VERITY)."""
    out = run("fsverity", "measure", path).stdout.split()
    return out[0]


def fsverity_digest_userspace(path: os.PathLike, *extra: str) -> str:
    """fsverity-utils' digest computed in user space, as 'sha256:HEX'."""
    return run("fsverity", "digest", path, *extra).stdout.split()[0]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def kmsg_mark() -> str:
    """Writes a unique line into the kernel log; kmsg_since(mark) returns the lines logged after it."""
    mark = f"cfs-test-mark {uuid.uuid4().hex}"
    with open("/dev/kmsg", "w") as f:
        f.write(mark + "\n")
    return mark


def read_dmesg() -> list[str]:
    return run("dmesg").stdout.splitlines()


def kmsg_since(mark: str) -> list[str]:
    lines = read_dmesg()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].endswith(mark):
            return lines[i + 1:]
    raise AssertionError(f"kernel log mark {mark!r} not found (ring buffer wrapped?)")


# --- FIEMAP: where a file's blocks are on the device --------------------------------------------
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_ENCODED = 0x8
FIEMAP_EXTENT_NOT_ALIGNED = 0x100
FIEMAP_EXTENT_DATA_INLINE = 0x200


def physical_offset(path: os.PathLike, logical: int) -> int:
    """Byte offset on the underlying block device of the file byte at `logical`."""
    n = 32
    hdr = struct.pack("=QQIIII", 0, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, n, 0)
    buf = bytearray(hdr + bytes(56 * n))
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
    finally:
        os.close(fd)
    mapped = struct.unpack_from("=I", buf, 20)[0]
    bad = (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_ENCODED
           | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE)
    for i in range(mapped):
        lo, ph, ln, _, _, flags = struct.unpack_from("=QQQQQI", buf, 32 + 56 * i)
        if lo <= logical < lo + ln:
            if flags & bad:
                raise OSError(f"{path}: extent at {logical} has flags {flags:#x}, no stable location")
            return ph + (logical - lo)
    raise OSError(f"{path}: no extent maps byte {logical}")


# --- mounts -------------------------------------------------------------------------------------
def mount(source, target, fstype: str | None = None, options: str | None = None) -> None:
    cmd = ["mount"]
    if fstype:
        cmd += ["-t", fstype]
    if options:
        cmd += ["-o", options]
    run(*cmd, source, target)


def umount(target) -> None:
    run("umount", target)


@contextmanager
def mounted(source, target, fstype: str | None = None, options: str | None = None):
    Path(target).mkdir(parents=True, exist_ok=True)
    mount(source, target, fstype, options)
    try:
        yield Path(target)
    finally:
        run("umount", target, check=False)


def fs_type(path: os.PathLike) -> str:
    """File system type of the mount holding `path` (longest matching mount point)."""
    path = os.path.realpath(path)
    best, typ = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, t, *_ = line.split()
        mnt = mnt.encode().decode("unicode_escape")
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, typ = mnt, t
    return typ


@functools.lru_cache(maxsize=None)
def _project_digest_impl():
    """How the project computes fs-verity digests: 'api', 'cli' or None (asked once per session:
    starting a Python CLI costs seconds under TCG)."""
    try:
        from composefs import fsverity as cfs_fsverity  # type: ignore[attr-defined]

        if callable(getattr(cfs_fsverity, "digest_file", None)):
            return "api"
    except ImportError:
        pass
    r = run("cfsctl", "digest", "--help", check=False)
    return "cli" if r.returncode == 0 else None


def project_digest(path: os.PathLike) -> str | None:
    """Our own fs-verity digest of a file ('sha256:HEX'), or None if the project has no API yet."""
    impl = _project_digest_impl()
    if impl == "api":
        from composefs import fsverity as cfs_fsverity  # type: ignore[attr-defined]

        d = cfs_fsverity.digest_file(str(path))
        if isinstance(d, (bytes, bytearray)):
            d = d.hex()
        d = str(d)
        return d if d.startswith("sha256:") else "sha256:" + d
    if impl == "cli":
        out = run("cfsctl", "digest", path).stdout
        m = re.search(r"\b([0-9a-f]{64})\b", out)
        assert m, f"no digest in cfsctl digest output: {out!r}"
        return "sha256:" + m.group(1)
    return None


def conformance_stream(n: int) -> bytes:
    """The conformance data's content: sha256(b'cfs' + i as u64 LE) blocks, concatenated, first n bytes."""
    import hashlib

    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"cfs" + i.to_bytes(8, "little")).digest()
        i += 1
    return bytes(out[:n])


