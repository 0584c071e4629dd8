# SPDX-License-Identifier: MIT OR Apache-2.0
"""The two small system calls Python still makes around mounts: ``umount2`` (``cfsctl umount``,
FUSE unmounts as root) and ``FS_IOC_MEASURE_VERITY`` (a repository image's digest).

Mounting itself is done by the Rust core (``native/mount``, the code ``mount.composefs`` runs).
Each function does one call and raises ``OSError`` with errno on failure; no policy lives here.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# <linux/fsverity.h>: _IOWR('f', 134, struct fsverity_digest)
FS_IOC_MEASURE_VERITY = 0xC0046686
FS_VERITY_HASH_ALG_SHA256 = 1


def umount2(target: str, flags: int = 0) -> None:
    _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    if _libc.umount2(os.fsencode(target), flags) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount: {os.strerror(err)}", target)


def measure_verity(fd: int) -> tuple[int, bytes]:
    """FS_IOC_MEASURE_VERITY: (hash algorithm number, digest) of an fs-verity file."""
    buf = bytearray(struct.pack("=HH", 0, 64) + bytes(64))
    fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf)
    alg, size = struct.unpack_from("=HH", buf)
    return alg, bytes(buf[4 : 4 + size])
